//! The backends this binary can assemble a node from: those its cargo features compiled in,
//! each registered by its own crate, and those its plugins add.
//!
//! The registry decides what exists. The only names written here are those of the optional
//! backends a build may leave out, so that asking for one says which feature to rebuild with
//! (a test checks they match what each crate registers).

use syncline_core::Backends;

use crate::plugins::Loaded;

/// What an optional feature provides: a store kind or a transport's URL schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Provides {
    Store(&'static str),
    Transport(&'static [&'static str]),
}

/// The registry of a build, and the optional backends it was built without.
#[derive(Clone, Debug)]
pub struct NodeBackends {
    /// The registered stores and transports.
    pub backends: Backends,
    missing: Vec<(&'static str, Provides)>,
}

/// Registers an optional backend when its feature is compiled in (and not left out by
/// `without`), or records it as missing.
macro_rules! optional {
    ($c:ident, $without:ident, $feature:literal, $provides:expr, $register:path) => {{
        #[cfg(feature = $feature)]
        if $without.contains(&$feature) {
            $c.missing.push(($feature, $provides));
        } else {
            $register(&mut $c.backends);
        }
        #[cfg(not(feature = $feature))]
        $c.missing.push(($feature, $provides));
    }};
}

impl NodeBackends {
    /// Every backend compiled into this binary.
    pub fn compiled() -> Self {
        NodeBackends::without(&[])
    }

    /// The backends of this binary as if it had been built without `features` (to check what
    /// such a build says).
    pub fn without(features: &[&str]) -> Self {
        let mut c = NodeBackends {
            backends: Backends::new(),
            missing: Vec::new(),
        };
        optional!(
            c,
            features,
            "transport-memory",
            Provides::Transport(&["mem"]),
            syncline_transport_memory::register
        );
        optional!(
            c,
            features,
            "transport-http",
            Provides::Transport(&["http", "https"]),
            syncline_transport_http::register
        );
        optional!(
            c,
            features,
            "transport-websocket",
            Provides::Transport(&["ws", "wss"]),
            syncline_transport_websocket::register
        );
        optional!(
            c,
            features,
            "transport-quic",
            Provides::Transport(&["quic"]),
            syncline_transport_quic::register
        );
        optional!(
            c,
            features,
            "transport-redis",
            Provides::Transport(&["redis"]),
            syncline_transport_redis::register
        );
        optional!(
            c,
            features,
            "store-redb",
            Provides::Store("redb"),
            syncline_store_redb::register
        );
        optional!(
            c,
            features,
            "store-redis",
            Provides::Store("redis"),
            syncline_store_redis::register
        );
        c
    }

    /// Adds what the loaded plugins provide.
    pub fn with_plugins(mut self, plugins: &Loaded) -> Self {
        plugins.register(&mut self.backends);
        self
    }

    /// The feature this build lacks for the store kind `kind`.
    pub fn missing_store(&self, kind: &str) -> Option<&'static str> {
        self.missing
            .iter()
            .find(|(_, p)| matches!(p, Provides::Store(k) if *k == kind))
            .map(|(f, _)| *f)
    }

    /// The feature this build lacks for the URL scheme `scheme`.
    pub fn missing_scheme(&self, scheme: &str) -> Option<&'static str> {
        self.missing
            .iter()
            .find(|(_, p)| matches!(p, Provides::Transport(s) if s.contains(&scheme)))
            .map(|(f, _)| *f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names written above are those each crate registers: leaving a feature out removes
    /// exactly them.
    #[test]
    fn the_optional_names_match_what_each_crate_registers() {
        let all = NodeBackends::compiled();
        for (feature, provides) in NodeBackends::without(&[
            "transport-memory",
            "transport-http",
            "transport-websocket",
            "transport-quic",
            "transport-redis",
            "store-redb",
            "store-redis",
        ])
        .missing
        {
            if all.missing.iter().any(|(f, _)| *f == feature) {
                continue; // not compiled into this build: nothing to compare
            }
            let less = NodeBackends::without(&[feature]);
            match provides {
                Provides::Store(kind) => {
                    let gone: Vec<String> = all
                        .backends
                        .store_kinds()
                        .into_iter()
                        .filter(|k| !less.backends.store_kinds().contains(k))
                        .collect();
                    assert_eq!(gone, vec![kind.to_owned()], "{feature}");
                    assert_eq!(less.missing_store(kind), Some(feature));
                }
                Provides::Transport(schemes) => {
                    let gone: Vec<String> = all
                        .backends
                        .schemes()
                        .into_iter()
                        .filter(|s| !less.backends.schemes().contains(s))
                        .collect();
                    let mut want: Vec<String> = schemes.iter().map(|s| (*s).to_owned()).collect();
                    want.sort();
                    assert_eq!(gone, want, "{feature}");
                    assert_eq!(less.missing_scheme(schemes[0]), Some(feature));
                }
            }
        }
    }
}
