//! What a client may say of its run, checked before anything is taken from it,
//! and the name of the user the kernel says it is.

use std::collections::BTreeMap;

use super::super::protocol::{Hello, VERSION};
use super::super::DEFAULT_JOB;
use crate::parse::labels::{check_user_label_name, escape_controls};

/// At most this many `--label`s, and this long a job or label value.
const MAX_LABELS: usize = 32;
const MAX_VALUE_CHARS: usize = 1024;

fn is_hex_id(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// Checks what a client may say of its run; returns the job and the labels.
pub(super) fn check_hello(hello: &Hello) -> Result<(String, BTreeMap<String, String>), String> {
    if hello.version != VERSION {
        return Err(format!(
            "protocol version {} is not {VERSION}: run the wisp-agent exec that came with this daemon",
            hello.version
        ));
    }
    if !is_hex_id(&hello.trace_id, 32) || !is_hex_id(&hello.span_id, 16) {
        return Err("trace_id and span_id must be 32 and 16 lowercase hex digits".into());
    }
    if hello.labels.len() > MAX_LABELS {
        return Err(format!("more than {MAX_LABELS} labels"));
    }
    for (k, v) in &hello.labels {
        check_user_label_name(k)?;
        if v.chars().count() > MAX_VALUE_CHARS {
            return Err(format!(
                "label {k:?} is longer than {MAX_VALUE_CHARS} characters"
            ));
        }
    }
    if hello.job.chars().count() > MAX_VALUE_CHARS {
        return Err(format!(
            "the job is longer than {MAX_VALUE_CHARS} characters"
        ));
    }
    // Control characters are escaped, not refused: a refused run would wait in
    // its user's outbox for ever. (`exec` itself refuses them.)
    let job = if hello.job.is_empty() {
        DEFAULT_JOB.to_string()
    } else {
        escape_controls(&hello.job).into_owned()
    };
    let labels = hello
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), escape_controls(v).into_owned()))
        .collect();
    Ok((job, labels))
}

pub(super) use crate::users::user_name;
