//! What a configuration that fails validation can still tell: the canary's name (for its
//! stats) and the routing header with the stable cluster (so that an inert filter can still
//! send every request to stable, whatever the client sent). Each part is taken only if it
//! passes the same check as in a valid configuration; anything else is left out.

use super::validate::{check_name, is_cluster_name, is_header_name};
use serde_json::Value;

/// The parts of an invalid configuration that pass their own checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Salvage {
    pub name: Option<String>,
    /// `(routing header, stable cluster)`.
    pub stable_route: Option<(String, String)>,
}

pub fn salvage(bytes: &[u8]) -> Salvage {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) else {
        return Salvage::default();
    };
    let name = map
        .get("name")
        .and_then(Value::as_str)
        .and_then(|n| check_name(n).ok());
    let upstreams = map.get("upstreams").and_then(Value::as_object);
    let field = |key: &str| upstreams.and_then(|u| u.get(key)).and_then(Value::as_str);
    let stable_route = match (field("header"), field("stable")) {
        (Some(header), Some(stable)) => {
            let header = header.to_ascii_lowercase();
            (is_header_name(&header) && is_cluster_name(stable))
                .then(|| (header, stable.to_string()))
        }
        _ => None,
    };
    Salvage { name, stable_route }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_parts_that_pass_their_checks() {
        let s = salvage(
            br#"{"name":"web","upstreams":{"header":"X-Up","stable":"web-stable"},"analysis":7}"#,
        );
        assert_eq!(s.name.as_deref(), Some("web"));
        assert_eq!(
            s.stable_route,
            Some(("x-up".to_string(), "web-stable".to_string()))
        );
    }

    #[test]
    fn leaves_out_what_fails_its_check() {
        for bad in [
            &br#"{"name":"we b","upstreams":{"header":"x up","stable":"s"}}"#[..],
            br#"{"name":7,"upstreams":{"header":"x-up","stable":"a\r\nb"}}"#,
            br#"{"upstreams":{"header":"x-up","stable":"  "}}"#,
            br#"{"upstreams":["x-up","s","c"]}"#,
            br#"not json"#,
            br#"[1,2]"#,
        ] {
            assert_eq!(
                salvage(bad),
                Salvage::default(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
