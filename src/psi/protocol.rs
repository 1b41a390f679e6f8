//! Which matching engine runs a match: `ecdh` (the commutative-blinding engine of
//! this module) or `oprf` ([`super::oprf`]), and how `auto` picks one.
//!
//! Both engines reveal the same things per reveal mode (`docs/PRIVACY.md`), except
//! that `count` exists only under `ecdh`: in an OPRF protocol the receiver learns
//! *which* of its own elements matched, more than a count. `auto` therefore picks
//! `oprf` (far cheaper per element) for `partner`, `owner` and `both`, and `ecdh`
//! for `count`, among the engines the owner allows.

use std::fmt;
use std::str::FromStr;

use super::reveal::Reveal;

/// A matching engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// ECDH private set intersection on ristretto255 (every reveal mode).
    Ecdh,
    /// OPRF-based PSI, PaXoS on an actively secure OT extension (every reveal mode but `count`).
    Oprf,
}

impl Protocol {
    /// Both engines, in the order `auto` prefers them.
    pub const ALL: [Protocol; 2] = [Protocol::Oprf, Protocol::Ecdh];

    /// The name used on the command line, in configuration and in summaries.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Ecdh => "ecdh",
            Protocol::Oprf => "oprf",
        }
    }

    /// Whether this engine offers `reveal`.
    pub fn offers(self, reveal: Reveal) -> bool {
        self == Protocol::Ecdh || reveal != Reveal::Count
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown protocol `{s}` (expected ecdh or oprf)"))
    }
}

/// Engine names joined with `, `, for messages.
pub(crate) fn names(protocols: &[Protocol]) -> String {
    protocols.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
}

/// What a user asks for: one engine, or `auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProtocolChoice {
    /// The fastest engine that is allowed and offers the reveal mode.
    #[default]
    Auto,
    /// Exactly this engine, or an error.
    Exactly(Protocol),
}

/// Why no engine can run a match.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolChoiceError {
    /// The engine asked for does not offer the reveal mode (`oprf` with `count`).
    #[error(
        "protocol {protocol} does not offer reveal mode {reveal} (an OPRF receiver learns which of its records matched, more than a count); use --protocol ecdh or auto"
    )]
    NotOffered {
        /// The engine asked for.
        protocol: Protocol,
        /// The reveal mode asked for.
        reveal: Reveal,
    },
    /// The owner does not allow the engine asked for (or none that offers the mode).
    #[error("protocol {asked} is not allowed for this campaign (allowed: {allowed})")]
    NotAllowed {
        /// What was asked for (`auto` or an engine name).
        asked: String,
        /// The engines the campaign allows, comma-separated.
        allowed: String,
    },
}

impl ProtocolChoice {
    /// The engine to run for `reveal` when the owner allows `allowed`: the first
    /// of [`ProtocolChoice::offer`] that is allowed.
    pub fn resolve(self, reveal: Reveal, allowed: &[Protocol]) -> Result<Protocol, ProtocolChoiceError> {
        self.offer(reveal)?.into_iter().find(|p| allowed.contains(p)).ok_or_else(|| ProtocolChoiceError::NotAllowed {
            asked: match self {
                ProtocolChoice::Auto => "auto".to_owned(),
                ProtocolChoice::Exactly(p) => p.name().to_owned(),
            },
            allowed: names(allowed),
        })
    }

    /// The engines a client offers in its hello for `reveal`, most preferred first:
    /// the one asked for, or (`auto`) every engine that offers the mode, fastest
    /// first; the owner picks the first it allows. Refuses an engine that does not
    /// offer the mode (`oprf` with `count`).
    pub fn offer(self, reveal: Reveal) -> Result<Vec<Protocol>, ProtocolChoiceError> {
        match self {
            ProtocolChoice::Exactly(protocol) if !protocol.offers(reveal) => {
                Err(ProtocolChoiceError::NotOffered { protocol, reveal })
            }
            ProtocolChoice::Exactly(protocol) => Ok(vec![protocol]),
            ProtocolChoice::Auto => Ok(Protocol::ALL.into_iter().filter(|p| p.offers(reveal)).collect()),
        }
    }
}

impl FromStr for ProtocolChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ProtocolChoice::Auto),
            other => other
                .parse()
                .map(ProtocolChoice::Exactly)
                .map_err(|_| format!("unknown protocol `{s}` (expected auto, ecdh or oprf)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_oprf_except_for_count_and_respects_what_is_allowed() {
        let both = [Protocol::Ecdh, Protocol::Oprf];
        for reveal in [Reveal::Partner, Reveal::Owner, Reveal::Both] {
            assert_eq!(ProtocolChoice::Auto.resolve(reveal, &both), Ok(Protocol::Oprf));
            assert_eq!(ProtocolChoice::Auto.resolve(reveal, &[Protocol::Ecdh]), Ok(Protocol::Ecdh));
        }
        assert_eq!(ProtocolChoice::Auto.resolve(Reveal::Count, &both), Ok(Protocol::Ecdh));
        assert!(matches!(
            ProtocolChoice::Auto.resolve(Reveal::Count, &[Protocol::Oprf]),
            Err(ProtocolChoiceError::NotAllowed { .. })
        ));
        let oprf = ProtocolChoice::Exactly(Protocol::Oprf);
        assert_eq!(
            oprf.resolve(Reveal::Count, &both),
            Err(ProtocolChoiceError::NotOffered { protocol: Protocol::Oprf, reveal: Reveal::Count })
        );
        assert!(matches!(oprf.resolve(Reveal::Both, &[Protocol::Ecdh]), Err(ProtocolChoiceError::NotAllowed { .. })));
        assert_eq!("auto".parse(), Ok(ProtocolChoice::Auto));
        assert_eq!("ecdh".parse(), Ok(ProtocolChoice::Exactly(Protocol::Ecdh)));
        assert!("ECDH".parse::<ProtocolChoice>().is_err());
    }
}
