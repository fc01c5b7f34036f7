//! Environment overrides, applied above the file: `WISP_HOST`, `LOKI_URL`, and the
//! standard `OTEL_*` variables.

use std::collections::{BTreeMap, HashMap};

use super::{load::ConfigError, Config, OtlpProtocol};

/// Where environment variables come from: the process, or a map in tests.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

const LOKI_PUSH_PATH: &str = "/loki/api/v1/push";

/// Applies the overrides; returns the names of the variables that took effect.
pub fn apply_env(config: &mut Config, env: &dyn EnvSource) -> Result<Vec<String>, ConfigError> {
    let mut applied = Vec::new();
    let mut get = |name: &'static str| {
        let v = env.var(name).filter(|v| !v.trim().is_empty());
        if v.is_some() {
            applied.push(name.to_string());
        }
        v
    };
    if let Some(h) = get("WISP_HOST") {
        config.host.address = h.trim().to_string();
    }
    if let Some(url) = get("LOKI_URL") {
        let url = url.trim().trim_end_matches('/');
        config.loki.url = if url.ends_with(LOKI_PUSH_PATH) {
            url.to_string()
        } else {
            format!("{url}{LOKI_PUSH_PATH}")
        };
    }
    if let Some(e) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
        config.otlp.endpoint = e.trim().trim_end_matches('/').to_string();
    }
    if let Some(p) = get("OTEL_EXPORTER_OTLP_PROTOCOL") {
        config.otlp.protocol = OtlpProtocol::parse(&p).ok_or_else(|| {
            ConfigError::invalid(
                "environment variable OTEL_EXPORTER_OTLP_PROTOCOL",
                "otlp.protocol",
                format!("expected grpc, http/protobuf or http/json, found {p:?}"),
            )
        })?;
    }
    if let Some(h) = get("OTEL_EXPORTER_OTLP_HEADERS") {
        let pairs = parse_pairs(&h).map_err(|m| {
            ConfigError::invalid(
                "environment variable OTEL_EXPORTER_OTLP_HEADERS",
                "otlp.headers",
                m,
            )
        })?;
        config.otlp.headers.extend(pairs);
    }
    if let Some(s) = get("OTEL_SERVICE_NAME") {
        config.otlp.service_name = s.trim().to_string();
    }
    if let Some(a) = get("OTEL_RESOURCE_ATTRIBUTES") {
        let pairs = parse_pairs(&a).map_err(|m| {
            ConfigError::invalid(
                "environment variable OTEL_RESOURCE_ATTRIBUTES",
                "otlp.resource_attributes",
                m,
            )
        })?;
        config.otlp.resource_attributes.extend(pairs);
    }
    Ok(applied)
}

/// `key1=value1,key2=value2` with percent-decoded values, as the OTel spec writes
/// headers and resource attributes.
fn parse_pairs(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            format!("expected key=value pairs separated by commas, found {part:?}")
        })?;
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("empty key in {part:?}"));
        }
        out.insert(k.to_string(), percent_decode(v.trim()));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn loki_url_gets_the_push_path_when_missing() {
        let mut c = Config::default();
        apply_env(&mut c, &env(&[("LOKI_URL", "http://10.0.0.5:3100")])).unwrap();
        assert_eq!(c.loki.url, "http://10.0.0.5:3100/loki/api/v1/push");
        apply_env(
            &mut c,
            &env(&[("LOKI_URL", "http://h:3100/loki/api/v1/push")]),
        )
        .unwrap();
        assert_eq!(c.loki.url, "http://h:3100/loki/api/v1/push");
    }

    #[test]
    fn otel_variables_override_the_file() {
        let mut c = Config::default();
        let applied = apply_env(
            &mut c,
            &env(&[
                ("WISP_HOST", "192.168.5.2"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "authorization=Bearer%20abc, x-team=core",
                ),
                ("OTEL_SERVICE_NAME", "vm-agent"),
                ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=dev"),
            ]),
        )
        .unwrap();
        assert_eq!(applied.len(), 6);
        assert_eq!(c.host.address, "192.168.5.2");
        assert_eq!(c.otlp.endpoint, "http://collector:4318");
        assert_eq!(c.otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.otlp.headers["authorization"], "Bearer abc");
        assert_eq!(c.otlp.service_name, "vm-agent");
        assert_eq!(c.otlp.resource_attributes["deployment.environment"], "dev");
    }

    #[test]
    fn a_bad_protocol_names_the_variable() {
        let e = apply_env(
            &mut Config::default(),
            &env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && e.contains("http/json"),
            "{e}"
        );
    }
}
