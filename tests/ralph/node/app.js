// A small Node service of a Ralph loop iteration (tests/ralph_loop.rs): it
// logs with pino to stdout, inside spans made with @opentelemetry/api, so each
// line carries the span's trace_id and span_id. Loaded with
// `node --require ./instrumentation.js app.js`.
//
// For the test's bookkeeping only, when RALPH_RECORDS names a folder, every
// line printed is also written to RALPH_RECORDS/node-<pid>.log, after a first
// line holding TRACEPARENT and OTEL_RESOURCE_ATTRIBUTES as the process got them.
'use strict';

const fs = require('fs');
const path = require('path');
const pino = require('pino');
const { trace } = require('@opentelemetry/api');

const streams = [{ level: 'trace', stream: pino.destination({ dest: 1, sync: true }) }];
const records = process.env.RALPH_RECORDS;
if (records) {
  const file = path.join(records, `node-${process.pid}.log`);
  fs.writeFileSync(
    file,
    JSON.stringify({
      traceparent: process.env.TRACEPARENT || '',
      resource: process.env.OTEL_RESOURCE_ATTRIBUTES || '',
    }) + '\n',
  );
  streams.push({ level: 'trace', stream: pino.destination({ dest: file, sync: true, append: true }) });
}
const logger = pino({ base: { pid: process.pid, hostname: 'ralph-vm' } }, pino.multistream(streams));
const tracer = trace.getTracer('ralph-node-app', '1.0.0');

function work(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function main() {
  logger.info('iteration starting');
  await tracer.startActiveSpan('plan', async (span) => {
    logger.info({ step: 'plan' }, 'reading the task list');
    await work(20);
    await tracer.startActiveSpan('read files', async (child) => {
      logger.info({ files: 3 }, 'read 3 files');
      await work(10);
      child.end();
    });
    logger.warn({ step: 'plan' }, 'the task list has a stale entry');
    span.end();
  });
  await tracer.startActiveSpan('apply', async (span) => {
    logger.info({ step: 'apply' }, 'applying the change');
    await work(20);
    logger.error({ step: 'apply', code: 'E_TEST' }, 'a test failed, retrying');
    await tracer.startActiveSpan('run tests', async (child) => {
      logger.info({ passed: 12 }, 'tests passed');
      child.end();
    });
    span.end();
  });
  logger.info('iteration done');
}

main();
