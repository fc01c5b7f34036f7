// The OpenTelemetry Node SDK set up the ordinary way, loaded before the app with
// `node --require ./instrumentation.js app.js`: NodeSDK takes its exporters,
// endpoint, protocol and resource from the OTEL_* environment (which
// `wisp-agent exec` fills in), and the pino instrumentation adds trace_id and
// span_id to each pino line (and, by default, sends each line as an OTLP log
// record too).
'use strict';

const { NodeSDK } = require('@opentelemetry/sdk-node');
const { PinoInstrumentation } = require('@opentelemetry/instrumentation-pino');

const sdk = new NodeSDK({
  instrumentations: [new PinoInstrumentation()],
});
sdk.start();

// NodeSDK does not flush by itself when the process ends: shut it down once the
// app has nothing left to do (or is told to stop), as its README says to.
let stopping;
function shutdown() {
  stopping = stopping || sdk.shutdown().catch((err) => {
    process.stderr.write(`opentelemetry shutdown failed: ${err}\n`);
  });
  return stopping;
}
process.once('beforeExit', shutdown);
process.once('SIGTERM', () => shutdown().finally(() => process.exit(143)));
