//! Identifier normalization: turning the same person's email address or phone number
//! into the same bytes on both sides of a match.
//!
//! Match rate lives here. Rules are grouped into named, versioned [`Profile`]s; the
//! profile name travels with every token file and every match session, and two parties
//! using different profiles get an error, never a silent near-miss. Every rejection
//! carries a short machine-readable [`Reject`] reason.
//!
//! Invariant: a published profile's outputs (values and reject reasons) never change.
//! A fix that changes any output ships as a new profile version (`idmatch-v2` is
//! `idmatch-v1` plus three fixes) selected by a rule switch on [`Profile`]; the rule
//! code itself is shared, never copied per profile.
//!
//! A [`Normalizer`] is cheap to create and is shared freely between threads (`Send`
//! and `Sync`; the file reader's rayon workers all use one): it holds only the
//! profile and default region, and writes into a caller-supplied buffer so that the
//! hot path allocates nothing for ASCII input. The email rules keep a per-thread
//! cache of checked domains.

mod email;
mod phone;

use std::fmt;
use std::str::FromStr;

pub use rlibphonenumber::Region;

/// The kind of an identifier. Its [`label`](Kind::label) is the ASCII prefix hashed
/// into every token (`email:` / `phone:`), so an email and a phone can never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// An email address.
    Email,
    /// A phone number (normalized to E.164).
    Phone,
}

impl Kind {
    /// Both kinds, in their canonical order (used for `matched_kinds` output).
    pub const ALL: [Kind; 2] = [Kind::Email, Kind::Phone];

    /// The ASCII label: `email` or `phone`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "email" => Ok(Kind::Email),
            "phone" => Ok(Kind::Phone),
            other => Err(format!("unknown identifier kind `{other}` (expected email or phone)")),
        }
    }
}

/// A named, versioned set of normalization rules. Both parties of a match must use the
/// same profile; the name is part of every token file and protocol hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Profile {
    /// The default: full email canonicalization including Gmail dot and plus-tag
    /// folding, strict E.164 phones.
    #[default]
    IdmatchV1,
    /// Trim, lowercase, IDNA, E.164; no Gmail rules. For partners whose pipelines keep
    /// dots and plus-tags.
    BasicV1,
    /// `idmatch-v1` plus three fixes, recommended for new campaigns: an email's local
    /// part and `@` folded to NFKC (full-width `ｊｏｈｎ＠` is `john@`, as a full-width
    /// domain already was), placeholder phone numbers (one digit repeated, such as
    /// 555-555-5555) refused whatever the region, and the RFC 3966 `phone-context` of
    /// a `tel:` URI honoured. Every other output is idmatch-v1's.
    IdmatchV2,
}

impl Profile {
    /// Every profile this build knows, oldest first (new versions are appended).
    pub const ALL: [Profile; 3] = [Profile::IdmatchV1, Profile::BasicV1, Profile::IdmatchV2];

    /// The profile's wire and file name.
    pub fn name(self) -> &'static str {
        match self {
            Profile::IdmatchV1 => "idmatch-v1",
            Profile::BasicV1 => "basic-v1",
            Profile::IdmatchV2 => "idmatch-v2",
        }
    }

    /// Email step 8: Gmail dot and `+tag` folding.
    fn folds_gmail(self) -> bool {
        matches!(self, Profile::IdmatchV1 | Profile::IdmatchV2)
    }

    /// Email compatibility forms folded (NFKC): of `@` in step 4 (full-width `＠`,
    /// small `﹫`) and of the whole local part in step 5a. The domain is left to UTS
    /// #46, which maps them in every profile.
    fn folds_compatibility(self) -> bool {
        matches!(self, Profile::IdmatchV2)
    }

    /// Phone numbers whose national significant number is one digit repeated are
    /// refused (`placeholder_number`) in every region, valid or not.
    fn refuses_placeholders(self) -> bool {
        matches!(self, Profile::IdmatchV2)
    }

    /// A `tel:` URI's `phone-context` parameter is read (RFC 3966 §5.1.5) rather
    /// than dropped with the other parameters.
    fn honours_phone_context(self) -> bool {
        matches!(self, Profile::IdmatchV2)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let known: Vec<&str> = Profile::ALL.iter().map(|p| p.name()).collect();
            format!("unknown normalization profile `{s}` (known: {})", known.join(", "))
        })
    }
}

/// Why an identifier was rejected. [`Reject::code`] is the stable machine-readable
/// reason written to reject reports and `!error` lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// Nothing left after trimming.
    Empty,
    /// Whitespace, control or format characters inside the value.
    BadCharacter,
    /// An email without `@`.
    MissingAt,
    /// An email with more than one `@`.
    MultipleAt,
    /// The local part is not a dot-atom (quotes, comments, bad dots, forbidden
    /// characters), or is empty.
    BadLocal,
    /// Gmail folding left nothing of the local part (e.g. `+tag@gmail.com`).
    EmptyLocal,
    /// The domain fails IDNA/STD3 rules, has fewer than two labels, a bad top-level
    /// label, an IP literal or a trailing dot.
    BadDomain,
    /// Local part over 64 octets, address over 254, or a phone input over 64 chars.
    TooLong,
    /// A phone value containing letters (vanity numbers, junk).
    LettersInNumber,
    /// Not recognisable as a phone number at all.
    NotANumber,
    /// A phone number with an unknown country calling code, or a national number
    /// with no region to interpret it in. Under `idmatch-v2` also a `tel:` URI local
    /// number whose `phone-context` is a domain name rather than a `+` number prefix:
    /// it names no country, and the default region is not guessed instead.
    UnknownCountry,
    /// A number libphonenumber parses but does not consider valid.
    InvalidNumber,
    /// (`idmatch-v2`) A placeholder number: its national significant number is one
    /// digit repeated (555-555-5555, 000 000 0000), refused in every region even where
    /// libphonenumber considers it valid.
    PlaceholderNumber,
    /// A region column value that is not an ISO 3166 alpha-2 code.
    BadRegion,
    /// A CSV cell that is not valid UTF-8.
    BadEncoding,
}

impl Reject {
    /// The stable, machine-readable reason code.
    pub fn code(self) -> &'static str {
        match self {
            Reject::Empty => "empty",
            Reject::BadCharacter => "bad_character",
            Reject::MissingAt => "missing_at",
            Reject::MultipleAt => "multiple_at",
            Reject::BadLocal => "bad_local",
            Reject::EmptyLocal => "empty_local",
            Reject::BadDomain => "bad_domain",
            Reject::TooLong => "too_long",
            Reject::LettersInNumber => "letters_in_number",
            Reject::NotANumber => "not_a_number",
            Reject::UnknownCountry => "unknown_country",
            Reject::InvalidNumber => "invalid_number",
            Reject::PlaceholderNumber => "placeholder_number",
            Reject::BadRegion => "bad_region",
            Reject::BadEncoding => "bad_encoding",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Parses an ISO 3166 alpha-2 region code (case-insensitive), e.g. `US`, `de`.
///
/// Only regions that libphonenumber has numbering rules for are accepted: a code
/// such as `UK` (the United Kingdom is `GB`) or `XX` would otherwise be taken and
/// then silently reject every national-format number read under it.
pub fn parse_region(code: &str) -> Result<Region, Reject> {
    let code = code.trim();
    if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(Reject::BadRegion);
    }
    let upper = [code.as_bytes()[0].to_ascii_uppercase(), code.as_bytes()[1].to_ascii_uppercase()];
    let upper = std::str::from_utf8(&upper).map_err(|_| Reject::BadRegion)?;
    let region = Region::from_code(upper).map_err(|_| Reject::BadRegion)?;
    match rlibphonenumber::PHONE_NUMBER_UTIL.get_country_code_for_region(region) {
        Some(_) => Ok(region),
        None => Err(Reject::BadRegion),
    }
}

/// Why `code` is not accepted by [`parse_region`], for error messages.
pub fn region_problem(code: &str) -> String {
    let hint = if code.trim().eq_ignore_ascii_case("uk") { " (the United Kingdom is GB)" } else { "" };
    format!("`{code}` is not an ISO 3166 alpha-2 region with phone numbering rules, such as US, GB or DE{hint}")
}

/// Characters trimmed from both ends of every identifier: Unicode whitespace, the byte
/// order mark and zero-width characters (which spreadsheets and copy-paste leave
/// behind).
fn is_trimmable(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{FEFF}' | '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}')
}

fn trim(input: &str) -> &str {
    input.trim_matches(is_trimmable)
}

/// Normalizes identifiers under one profile and default region.
///
/// Invariant: for a given profile, equal outputs mean "the same identifier" and the
/// output is a fixed point (normalizing it again returns it unchanged).
#[derive(Clone, Debug)]
pub struct Normalizer {
    profile: Profile,
    default_region: Option<Region>,
}

impl Normalizer {
    /// A normalizer for `profile`; `default_region` interprets national-format phone
    /// numbers whose record carries no region of its own.
    pub fn new(profile: Profile, default_region: Option<Region>) -> Self {
        Normalizer { profile, default_region }
    }

    /// The profile this normalizer applies.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Normalizes `input` of `kind` into `out` (cleared first). `region` overrides the
    /// default region for phone numbers.
    pub fn normalize_into(
        &self,
        kind: Kind,
        input: &str,
        region: Option<Region>,
        out: &mut String,
    ) -> Result<(), Reject> {
        out.clear();
        match kind {
            Kind::Email => email::normalize(input, self.profile, out),
            Kind::Phone => phone::normalize(input, region.or(self.default_region), self.profile, out),
        }
    }

    /// Convenience wrapper around [`normalize_into`](Self::normalize_into) that
    /// allocates the result.
    pub fn normalize(&self, kind: Kind, input: &str, region: Option<Region>) -> Result<String, Reject> {
        let mut out = String::new();
        self.normalize_into(kind, input, region, &mut out)?;
        Ok(out)
    }
}
