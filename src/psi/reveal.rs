//! Who learns what in a match ([`Reveal`]): the reveal modes a partner asks for
//! and an owner allows, and what each mode sends back (`docs/PRIVACY.md` says what
//! each side learns under each).

use std::fmt;
use std::str::FromStr;

/// Who learns what (see `docs/PRIVACY.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reveal {
    /// The partner learns which of its records match; the owner learns sizes only.
    Partner,
    /// The owner learns which of its records match; the partner learns sizes only.
    Owner,
    /// Both learn which of their own records match.
    Both,
    /// The partner learns only the intersection size; the owner learns sizes only.
    Count,
}

impl Reveal {
    /// Every reveal mode.
    pub const ALL: [Reveal; 4] = [Reveal::Partner, Reveal::Owner, Reveal::Both, Reveal::Count];

    /// The mode's wire and command-line name: `partner`, `owner`, `both` or `count`.
    pub fn name(self) -> &'static str {
        match self {
            Reveal::Partner => "partner",
            Reveal::Owner => "owner",
            Reveal::Both => "both",
            Reveal::Count => "count",
        }
    }

    /// The owner returns the partner's elements re-blinded (in order, or shuffled in
    /// `count` mode).
    pub fn owner_returns_partner_elements(self) -> bool {
        !matches!(self, Reveal::Owner)
    }

    /// The partner returns the owner's elements re-blinded, in order.
    pub fn partner_returns_owner_elements(self) -> bool {
        matches!(self, Reveal::Owner | Reveal::Both)
    }

    /// The partner learns which of its records match.
    pub fn partner_learns_records(self) -> bool {
        matches!(self, Reveal::Partner | Reveal::Both)
    }

    /// The partner learns the intersection size.
    pub fn partner_learns_count(self) -> bool {
        !matches!(self, Reveal::Owner)
    }
}

impl fmt::Display for Reveal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Reveal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reveal::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown reveal mode `{s}` (expected partner, owner, both or count)"))
    }
}
