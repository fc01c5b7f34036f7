//! The families of the host discovery chose, and the agent's build: what
//! `wisp_host_*` and `wisp_build_info` say, read from the discovery's watch
//! channel at each reading.

use tokio::sync::watch;

use super::Chosen;
use crate::metric::{encode, gauge, labelled, names, one, single, Family, Registry};

/// The agent's build and the host discovery chose.
pub(crate) const FAMILIES: &[Family<Option<Chosen>>] = &[
    gauge("wisp_build_info", "The agent's version, as a label; always 1.", |_| {
        vec![labelled([("version", env!("CARGO_PKG_VERSION").into())], 1)]
    }),
    gauge(
        "wisp_host_chosen",
        "1 while discovery has a host to ship to, 0 while no candidate answered yet.",
        |c| one(u64::from(c.is_some())),
    ),
    gauge(
        "wisp_host_info",
        "The host discovery chose: the candidate as configured and its address; always 1, absent while none answers.",
        |c| {
            c.iter()
                .map(|c| {
                    labelled(
                        // A candidate is a name or an address as configured; should
                        // one be written as a URL with credentials, they stay out
                        // of the scrape.
                        [
                            ("candidate", crate::config::redact_text(&c.name).into()),
                            ("host", c.address.to_string().into()),
                        ],
                        1,
                    )
                })
                .collect()
        },
    ),
];

/// Registers the build and host families, read from `host` (the watch
/// channel of the discovery's choice) at each reading.
pub fn register(metrics: &mut Registry, host: watch::Receiver<Option<Chosen>>) {
    metrics.add("host", names(FAMILIES), move |out| {
        let chosen = host.borrow().clone();
        encode(out, FAMILIES, &single(&chosen))
    });
}
