//! Normalization vectors taken from the platforms' published hashing/normalization
//! rules, run against idmatch's profiles.
//!
//! Sources (cited by the `source` column of every case):
//!
//! * Google Data Manager API, "Format user data":
//!   <https://developers.google.com/data-manager/api/get-started/formatting>
//!   (lowercase; for gmail.com / googlemail.com remove dots and the `+tag`; trim leading,
//!   trailing *and intermediate* whitespace; phones E.164 with `+`). Earlier versions of
//!   the page only removed Gmail dots; the current one also removes the `+tag`.
//! * Google Campaign Manager 360 API, "Enhanced Conversions":
//!   <https://developers.google.com/doubleclick-advertisers/guides/conversions_ec>
//!   (trim, lowercase, E.164, remove dots before gmail.com/googlemail.com; its sample code
//!   keeps the `googlemail.com` domain as is).
//! * Google Ads Customer Match plain-text template (linked from
//!   <https://support.google.com/google-ads/answer/7659867>) and the Google Ads API team's
//!   E.164 answer <https://groups.google.com/g/adwords-api/c/GLqSCji7Hx0>.
//! * Meta Conversions API, "Customer Information Parameters":
//!   <https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/customer-information-parameters>
//!   (`em`: trim, lowercase, nothing Gmail-specific; `ph`: remove symbols, letters and
//!   leading zeros, keep the country code, no `+`).
//! * UID2, "Normalization and Encoding":
//!   <https://unifiedid.com/docs/getting-started/gs-normalization-encoding>
//!   (trim, lowercase; in `gmail.com` addresses only, remove dots and the `+tag`; phones
//!   E.164 with `+`, which the UID2 Operator requires as input).
//! * Snap Conversions API, "Parameters":
//!   <https://developers.snap.com/api/marketing-api/Conversions-API/Parameters>
//! * TikTok Ads Help, "List of supported IDs and formats for a customer file":
//!   <https://ads.tiktok.com/help/preview?content_id=5gcDeV2ckkwNVh1BedxvSJ&lang=en>
//! * LiveRamp Connect, "Hashing Identifiers":
//!   <https://docs.liveramp.com/connect/en/hashing-identifiers.html>
//!
//! Where a platform's rule differs from idmatch-v1, the case tests what idmatch-v1 does
//! and the comment says how the platform differs. Reject cases are idmatch's own
//! validation (no platform publishes reject rules); their source names the standard.
//!
//! idmatch-v2 is idmatch-v1 plus three fixes, and its vectors say so explicitly: it is
//! run on every idmatch-v1 vector, with the results it changes listed as overrides
//! (`V2_*_OVERRIDES`), plus its own cases (`V2_*_CASES`), each of which idmatch-v1
//! gets wrong (checked, so that every v2 case tests a fix).
//!
//! The last table recomputes SHA-256 digests that the platforms publish next to their
//! examples: it proves the idmatch output is byte-for-byte the platform's normalized
//! string (where the two agree), not just something that looks like it.

use idmatch::normalize::{Kind, Normalizer, Profile, Region, parse_region};
use sha2::{Digest, Sha256};

/// `Ok(normalized)` or `Err(reject code)`.
type Expected = Result<&'static str, &'static str>;

/// (kind, input, region, strip the leading `+` before hashing, SHA-256 hex, source).
type DigestCase = (Kind, &'static str, Option<&'static str>, bool, &'static str, &'static str);

const GOOGLE_DM: &str =
    "Google Data Manager API, Format user data — https://developers.google.com/data-manager/api/get-started/formatting";
const GOOGLE_CM360: &str = "Google CM360 API, Enhanced Conversions — https://developers.google.com/doubleclick-advertisers/guides/conversions_ec";
const GOOGLE_CM_TEMPLATE: &str =
    "Google Ads Customer Match data template (via https://support.google.com/google-ads/answer/7659867)";
const GOOGLE_ADS_API: &str = "Google Ads API team on E.164 — https://groups.google.com/g/adwords-api/c/GLqSCji7Hx0";
const META: &str = "Meta Conversions API, Customer Information Parameters — https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/customer-information-parameters";
const UID2: &str =
    "UID2, Normalization and Encoding — https://unifiedid.com/docs/getting-started/gs-normalization-encoding";
const SNAP: &str =
    "Snap Conversions API, Parameters — https://developers.snap.com/api/marketing-api/Conversions-API/Parameters";
const TIKTOK: &str = "TikTok Ads Help, supported IDs and formats for a customer file — https://ads.tiktok.com/help/preview?content_id=5gcDeV2ckkwNVh1BedxvSJ&lang=en";
const LIVERAMP: &str =
    "LiveRamp Connect, Hashing Identifiers — https://docs.liveramp.com/connect/en/hashing-identifiers.html";
const RFC5322: &str = "idmatch-v1 validation: RFC 5322 §3.4.1 dot-atom local part (no platform documents rejects)";
const RFC5321: &str = "idmatch-v1 validation: RFC 5321 §4.5.3.1 size limits (no platform documents rejects)";
const IDNA: &str =
    "idmatch-v1 validation: IDNA2008/UTS #46 with STD3 rules, RFC 1123 host names (no platform documents rejects)";
const IDMATCH: &str = "idmatch-v1 rule (see src/normalize; no platform documents this case)";
const LIBPHONENUMBER: &str = "idmatch-v1 validation: libphonenumber metadata (no platform documents rejects)";
const NFKC: &str = "idmatch-v2 fix: Unicode UAX #15 NFKC of the local part and `@` (idmatch-v1: NFC only)";
const PLACEHOLDER: &str = "idmatch-v2 fix: placeholder numbers (one digit repeated) refused in every region";
const RFC3966: &str = "idmatch-v2 fix: RFC 3966 §5.1.5 phone-context honoured (idmatch-v1 drops the parameter)";

/// Email cases under profile idmatch-v1: (input, expected, source).
#[rustfmt::skip]
const EMAIL_CASES: &[(&str, Expected, &str)] = &[
    // --- UID2 "Normalization Examples for Email" table (published SHA-256 checked below).
    ("MyEmail@example.com", Ok("myemail@example.com"), UID2),
    ("MYEMAIL@example.com", Ok("myemail@example.com"), UID2),
    ("My.Email@example.com", Ok("my.email@example.com"), UID2),
    ("JANESAOIRSE@example.com", Ok("janesaoirse@example.com"), UID2),
    ("JaneSaoirse@example.com", Ok("janesaoirse@example.com"), UID2),
    ("jane.saoirse@example.com", Ok("jane.saoirse@example.com"), UID2),
    ("Jane.Saoirse@example.com", Ok("jane.saoirse@example.com"), UID2),
    // Non-Gmail domains keep their `+tag` (UID2, Google and idmatch agree).
    ("JaneSaoirse+Work@example.com", Ok("janesaoirse+work@example.com"), UID2),
    ("JANE.SAOIRSE@gmail.com", Ok("janesaoirse@gmail.com"), UID2),
    ("Jane.Saoirse@gmail.com", Ok("janesaoirse@gmail.com"), UID2),
    ("JaneSaoirse+Work@gmail.com", Ok("janesaoirse@gmail.com"), UID2),
    // UID2 introduction: `JANESaoirse@gmail.com` normalizes to `janesaoirse@gmail.com`.
    ("JANESaoirse@gmail.com", Ok("janesaoirse@gmail.com"), UID2),
    // UID2 normalization steps 3.1 and 3.2, their own examples.
    ("jane.doe@gmail.com", Ok("janedoe@gmail.com"), UID2),
    ("janedoe+home@gmail.com", Ok("janedoe@gmail.com"), UID2),
    // UID2 step 1 ("remove leading and trailing spaces") applied to the table's first example.
    ("  MyEmail@example.com ", Ok("myemail@example.com"), UID2),
    // UID2 applies the Gmail rules to `gmail.com` only and would keep
    // `jane.doe+home@googlemail.com` as is; idmatch-v1 folds googlemail.com like Google
    // does and also rewrites the domain to gmail.com (Google's docs keep googlemail.com).
    ("Jane.Doe+home@GoogleMail.com", Ok("janedoe@gmail.com"), UID2),
    // --- Google Data Manager API examples.
    ("cloudy.sanfrancisco+shopping@gmail.com", Ok("cloudysanfrancisco@gmail.com"), GOOGLE_DM),
    ("user.name+NYC@Example.com", Ok("user.name+nyc@example.com"), GOOGLE_DM),
    // Google applies the same rule to googlemail.com but keeps that domain
    // (`cloudysanfrancisco@googlemail.com`); idmatch-v1 canonicalizes it to gmail.com.
    ("cloudy.sanfrancisco+shopping@googlemail.com", Ok("cloudysanfrancisco@gmail.com"), GOOGLE_DM),
    // Google says to trim *intermediate* whitespace too (→ cloudysanfrancisco@gmail.com);
    // idmatch-v1 refuses to guess and rejects whitespace inside an address.
    ("cloudy sanfrancisco@gmail.com", Err("bad_character"), GOOGLE_DM),
    // CM360 Enhanced Conversions: remove dots before gmail.com (and lowercase, trim).
    (" Test.User@GMAIL.com ", Ok("testuser@gmail.com"), GOOGLE_CM360),
    // Customer Match template sample value.
    ("test@gmail.com", Ok("test@gmail.com"), GOOGLE_CM_TEMPLATE),
    // --- Meta: trim + lowercase only. `John_Smith@gmail.com` has no dot, so Meta and
    // idmatch-v1 agree (published SHA-256 checked below).
    ("John_Smith@gmail.com", Ok("john_smith@gmail.com"), META),
    // Meta documents no Gmail rule, so a Meta-style pipeline keeps `john.smith@gmail.com`;
    // idmatch-v1 removes the dot (use basic-v1 to line up with Meta).
    ("John.Smith@gmail.com", Ok("johnsmith@gmail.com"), META),
    // --- Snap: "trim ... and convert to lowercase" example.
    ("Person@Example.com", Ok("person@example.com"), SNAP),
    // --- LiveRamp: `"MyName@liveramp.com "` → `myname@liveramp.com` (LiveRamp removes all
    // whitespace; it documents no Gmail rule).
    ("MyName@liveramp.com ", Ok("myname@liveramp.com"), LIVERAMP),
    // --- TikTok: remove spaces, lowercase.
    ("johndoe@gmail.com", Ok("johndoe@gmail.com"), TIKTOK),
    // --- idmatch-v1 additions the platforms leave undefined.
    // Gmail folding after a `+`-only local part leaves nothing (UID2/Google would produce
    // the unusable `@gmail.com`).
    ("+Work@gmail.com", Err("empty_local"), UID2),
    // Byte order mark and zero-width space at the ends are trimmed like spaces.
    ("\u{FEFF}Jane@Example.com\u{200B}", Ok("jane@example.com"), IDMATCH),
    // A zero-width space inside is a format character: rejected, not silently dropped.
    ("jane\u{200B}doe@example.com", Err("bad_character"), IDMATCH),
    ("jane\tdoe@example.com", Err("bad_character"), IDMATCH),
    // Unicode NFC: decomposed é (e + U+0301) and precomposed é give the same bytes. UID2
    // only says "make sure the normalized email is UTF-8"; Meta asks for UTF-8 for names.
    ("Jose\u{301}@example.com", Ok("jos\u{E9}@example.com"), IDMATCH),
    // Internationalized domain to its IDNA A-label.
    ("info@Müller.de", Ok("info@xn--mller-kva.de"), IDNA),
    // Rejects.
    ("", Err("empty"), IDMATCH),
    ("jane.doe.example.com", Err("missing_at"), RFC5322),
    ("jane@doe@example.com", Err("multiple_at"), RFC5322),
    (".jane@example.com", Err("bad_local"), RFC5322),
    // Google/UID2 would remove both dots and produce janedoe@gmail.com; idmatch-v1 checks
    // the dot-atom before folding, so a malformed Gmail address is rejected.
    ("jane..doe@gmail.com", Err("bad_local"), RFC5322),
    ("\"jane\"@example.com", Err("bad_local"), RFC5322),
    ("jane@localhost", Err("bad_domain"), IDNA),
    ("jane@example.com.", Err("bad_domain"), IDNA),
    ("jane@[192.0.2.1]", Err("bad_domain"), IDNA),
    ("jane@ex_ample.com", Err("bad_domain"), IDNA),
    // 64-octet local part is the limit; 65 is too long.
    (
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@example.com",
        Ok("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@example.com"),
        RFC5321,
    ),
    (
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@example.com",
        Err("too_long"),
        RFC5321,
    ),
];

/// Email cases under profile basic-v1 (same checks, no Gmail folding).
#[rustfmt::skip]
const BASIC_EMAIL_CASES: &[(&str, Expected, &str)] = &[
    // UID2/Google would fold these to janesaoirse@gmail.com; basic-v1 keeps dots and the
    // `+tag`, which is what Meta's trim+lowercase rule produces.
    ("JANE.SAOIRSE@gmail.com", Ok("jane.saoirse@gmail.com"), META),
    ("JaneSaoirse+Work@gmail.com", Ok("janesaoirse+work@gmail.com"), META),
    ("John_Smith@gmail.com", Ok("john_smith@gmail.com"), META),
    // No googlemail.com → gmail.com rewrite either.
    (
        "cloudy.sanfrancisco+shopping@GoogleMail.com",
        Ok("cloudy.sanfrancisco+shopping@googlemail.com"),
        GOOGLE_DM,
    ),
    // Same as idmatch-v1 for non-Gmail domains.
    ("  MyEmail@example.com ", Ok("myemail@example.com"), UID2),
    ("user.name+NYC@Example.com", Ok("user.name+nyc@example.com"), GOOGLE_DM),
    // `+` is plain atext without Gmail folding, so this is accepted as is.
    ("+Work@gmail.com", Ok("+work@gmail.com"), RFC5322),
    // Same checks as idmatch-v1.
    ("info@Müller.de", Ok("info@xn--mller-kva.de"), IDNA),
    ("jane..doe@gmail.com", Err("bad_local"), RFC5322),
    ("jane.doe.example.com", Err("missing_at"), RFC5322),
    ("cloudy sanfrancisco@gmail.com", Err("bad_character"), GOOGLE_DM),
    ("jane@localhost", Err("bad_domain"), IDNA),
];

/// Phone cases under profile idmatch-v1: (input, region for national numbers, expected,
/// source). Every case is run twice: with the region as the per-record override and as
/// the normalizer's default region.
#[rustfmt::skip]
const PHONE_CASES: &[(&str, Option<&str>, Expected, &str)] = &[
    // --- UID2: E.164 with `+`. Its examples, interpreted in their country. (The UID2
    // Operator itself only accepts already-normalized `+` numbers; idmatch also accepts
    // national formats when a region is known.)
    ("1 (234) 567-8901", Some("US"), Ok("+12345678901"), UID2),
    ("+12345678901", None, Ok("+12345678901"), UID2),
    ("(02) 1234 5678", Some("AU"), Ok("+61212345678"), UID2),
    // UID2's Singapore example (`65 1243 5678` "is normalized to `+6512345678`"; the doc's
    // input and output digits differ) is not a valid Singapore number in libphonenumber's
    // metadata, in either spelling, so idmatch-v1 rejects it.
    ("65 1243 5678", Some("SG"), Err("invalid_number"), UID2),
    ("+65 1234 5678", None, Err("invalid_number"), UID2),
    // Without `+` or a region the country is unknowable.
    ("1 (234) 567-8901", None, Err("unknown_country"), UID2),
    // --- Google Data Manager API: `(800)555-0100` → `+18005550100`.
    ("(800)555-0100", Some("US"), Ok("+18005550100"), GOOGLE_DM),
    ("+1 800 555 0100", None, Ok("+18005550100"), GOOGLE_DM),
    // Google Ads API team's E.164 examples.
    ("+12125650000", None, Ok("+12125650000"), GOOGLE_ADS_API),
    ("+442070313000", None, Ok("+442070313000"), GOOGLE_ADS_API),
    // Customer Match template sample values ("the only formatting requirement is to
    // include country code").
    ("1-800-888-8888", Some("US"), Ok("+18008888888"), GOOGLE_CM_TEMPLATE),
    ("1(800)888-8888", Some("US"), Ok("+18008888888"), GOOGLE_CM_TEMPLATE),
    ("18008888899", Some("US"), Ok("+18008888899"), GOOGLE_CM_TEMPLATE),
    // --- Meta: US `(650)555-1212` → `16505551212` (digits with country code, no `+`;
    // idmatch-v1 keeps the `+`; the published SHA-256 of the `+`-less form is checked below).
    ("(650)555-1212", Some("US"), Ok("+16505551212"), META),
    // Meta's normalized form fed back in: fine with a region (leading 1 is the NANP
    // trunk prefix), unknown country without one (idmatch never guesses).
    ("16505551212", Some("US"), Ok("+16505551212"), META),
    ("16505551212", None, Err("unknown_country"), META),
    // Meta says "remove symbols, letters"; idmatch-v1 rejects letters instead of dropping
    // them (a vanity number with its letters dropped is a different, wrong number).
    ("1-800-FLOWERS", Some("US"), Err("letters_in_number"), META),
    // --- Snap: `+44 844 412 4653` → `448444124653` (no `+`; idmatch-v1 keeps it).
    ("+44 844 412 4653", None, Ok("+448444124653"), SNAP),
    // Snap: "remove any double 0 in front of the country code" (idmatch step 4).
    ("0044 844 412 4653", None, Ok("+448444124653"), SNAP),
    ("0044 844 412 4653", Some("US"), Ok("+448444124653"), SNAP),
    // Snap: "if the number itself begins with a 0, this should be removed" (trunk prefix).
    ("0844 412 4653", Some("GB"), Ok("+448444124653"), SNAP),
    ("+44 (0)844 412 4653", None, Ok("+448444124653"), SNAP),
    // --- TikTok: E.164 `+16577770000`, `+37493828222`; "also supported: without `+`
    // and country code" — idmatch-v1 needs a region for that form.
    ("+16577770000", None, Ok("+16577770000"), TIKTOK),
    ("+37493828222", None, Ok("+37493828222"), TIKTOK),
    ("657-777-0000", Some("US"), Ok("+16577770000"), TIKTOK),
    // --- LiveRamp: `+1 (555) 123-4567` → `5551234567` (drops the country code). 555 is
    // not a valid NANP area code in libphonenumber's metadata, so idmatch-v1 rejects it.
    ("+1 (555) 123-4567", None, Err("invalid_number"), LIVERAMP),
    // --- idmatch-v1 additions.
    // RFC 3966 tel: URI and extensions are dropped.
    ("tel:+1-650-555-1212;ext=12", None, Ok("+16505551212"), IDMATCH),
    ("+1 (650) 555-1212 ext. 12", None, Ok("+16505551212"), IDMATCH),
    // Fullwidth digits (copy-paste from CJK input methods) and NBSP padding.
    ("+１ ６５０ ５５５ １２１２", None, Ok("+16505551212"), IDMATCH),
    ("\u{A0}+1 650 555 1212\u{A0}", None, Ok("+16505551212"), IDMATCH),
    // Rejects.
    ("", Some("US"), Err("empty"), IDMATCH),
    ("555-555-5555", Some("US"), Err("invalid_number"), LIBPHONENUMBER),
    ("+1 650 555 12", None, Err("invalid_number"), LIBPHONENUMBER),
    ("+999 1234 5678", None, Err("unknown_country"), LIBPHONENUMBER),
    ("n/a", Some("US"), Err("letters_in_number"), IDMATCH),
    (
        "+1 650 555 1212 0000000000000000000000000000000000000000000000000",
        None,
        Err("too_long"),
        IDMATCH,
    ),
];

/// Phone cases under profile basic-v1: phones follow the same rules in both profiles.
#[rustfmt::skip]
const BASIC_PHONE_CASES: &[(&str, Option<&str>, Expected, &str)] = &[
    ("(800)555-0100", Some("US"), Ok("+18005550100"), GOOGLE_DM),
    ("+44 844 412 4653", None, Ok("+448444124653"), SNAP),
    ("16505551212", None, Err("unknown_country"), META),
    ("1-800-FLOWERS", Some("US"), Err("letters_in_number"), META),
];

/// Email cases under profile idmatch-v2 beyond [`EMAIL_CASES`], which all keep their
/// results (there are no email overrides): full-width and other compatibility forms in
/// the local part and of `@`. idmatch-v1 gets every one of these wrong.
#[rustfmt::skip]
const V2_EMAIL_CASES: &[(&str, Expected, &str)] = &[
    // idmatch-v1 folds a full-width domain (UTS #46) but keeps a full-width local part.
    ("ｊｏｈｎ@example.com", Ok("john@example.com"), NFKC),
    ("ＪＯＨＮ.ＤＯＥ@Example.com", Ok("john.doe@example.com"), NFKC),
    // A full-width `＠` (idmatch-v1: missing_at) and a full-width domain.
    ("ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ", Ok("john@example.com"), NFKC),
    ("john\u{FE6B}example.com", Ok("john@example.com"), NFKC),
    // Full-width dot and `+` become the ASCII ones before the Gmail rules (idmatch-v1:
    // bad_local, `＋` is not atext).
    ("ｊ．ｄｏｅ＋ｐｒｏｍｏ@gmail.com", Ok("jdoe@gmail.com"), NFKC),
    // Other compatibility forms: a ligature, a superscript digit.
    ("\u{FB01}nn\u{B2}@example.com", Ok("finn2@example.com"), NFKC),
];

/// idmatch-v1 phone vectors ([`PHONE_CASES`]) whose result idmatch-v2 changes: (input,
/// region, idmatch-v2 result, why). Every other idmatch-v1 phone vector keeps its result.
#[rustfmt::skip]
const V2_PHONE_OVERRIDES: &[(&str, Option<&str>, Expected, &str)] = &[
    // idmatch-v1: invalid_number, because libphonenumber finds it invalid in the US only.
    ("555-555-5555", Some("US"), Err("placeholder_number"), PLACEHOLDER),
];

/// Phone cases under profile idmatch-v2 beyond [`PHONE_CASES`] (with
/// [`V2_PHONE_OVERRIDES`]). idmatch-v1 gets every one of these wrong.
#[rustfmt::skip]
const V2_PHONE_CASES: &[(&str, Option<&str>, Expected, &str)] = &[
    // A valid UK (+44 55), German or Austrian number to libphonenumber, so idmatch-v1
    // accepted it there; the README promises placeholders are refused.
    ("555-555-5555", Some("GB"), Err("placeholder_number"), PLACEHOLDER),
    ("555-555-5555", Some("DE"), Err("placeholder_number"), PLACEHOLDER),
    ("555-555-5555", Some("AT"), Err("placeholder_number"), PLACEHOLDER),
    ("+44 5555 555555", None, Err("placeholder_number"), PLACEHOLDER),
    ("000-000-0000", Some("GB"), Err("placeholder_number"), PLACEHOLDER),
    // The context's global prefix makes the number national in that country, whatever
    // the region (idmatch-v1: +442015550123 under GB, unknown_country without a region).
    ("tel:201-555-0123;phone-context=+1", Some("GB"), Ok("+12015550123"), RFC3966),
    ("tel:201-555-0123;phone-context=+1", None, Ok("+12015550123"), RFC3966),
    ("TEL:201-555-0123;ext=7;Phone-Context=+1", Some("DE"), Ok("+12015550123"), RFC3966),
    // A prefix with an area code.
    ("tel:7183-8750;phone-context=+44-20", Some("US"), Ok("+442071838750"), RFC3966),
    // A domain name names no country: refused rather than read in the region.
    ("tel:201-555-0123;phone-context=example.com", Some("US"), Err("unknown_country"), RFC3966),
    // Not an RFC 3966 phone-context value at all.
    ("tel:201-555-0123;phone-context=+", Some("US"), Err("not_a_number"), RFC3966),
];

/// Digests published by the platforms next to their examples: (kind, input, region,
/// strip the leading `+` before hashing (for platforms whose phone format has none),
/// SHA-256 hex, source). Profiles idmatch-v1 and idmatch-v2 (which changes none of them).
#[rustfmt::skip]
const PUBLISHED_DIGESTS: &[DigestCase] = &[
    (Kind::Email, "user@example.com", None, false, "b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514", UID2),
    (Kind::Email, "MyEmail@example.com", None, false, "16c18d336f0b250f0e2d907452ceb9658a74ecdae8bc94864c23122a72cc27a5", UID2),
    (Kind::Email, "My.Email@example.com", None, false, "e22b53bc6f871274f3a62ab37a3caed7214fc14d676215a96a242fcfada1c81f", UID2),
    (Kind::Email, "JaneSaoirse@example.com", None, false, "d6670e7a92007f1b5ff785f1fc81e53aa6d3d7bd06bdf5c473cdc7286c284b6d", UID2),
    (Kind::Email, "Jane.Saoirse@example.com", None, false, "b196432c7b989a2ca91c83799957c515da53e6c13abf20b78fea94f117e90bf8", UID2),
    (Kind::Email, "JaneSaoirse+Work@example.com", None, false, "28aaee4815230cd3b4ebd88c515226550666e91ac019929e3adac3f66c288180", UID2),
    (Kind::Email, "JaneSaoirse+Work@gmail.com", None, false, "92ee26057ed9dea2535d6c8b141d48373932476599196e00352254896db5888f", UID2),
    (Kind::Phone, "1 (234) 567-8901", Some("US"), false, "10e6f0b47054a83359477dcb35231db6de5c69fb1816e1a6b98e192de9e5b9ee", UID2),
    (Kind::Email, "John_Smith@gmail.com", None, false, "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f", META),
    (Kind::Phone, "(650)555-1212", Some("US"), true, "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176", META),
    (Kind::Email, "Person@Example.com", None, false, "542d240129883c019e106e3b1b2d3f3cb3537c43c425364de8e951d5a3083345", SNAP),
    (Kind::Phone, "+44 844 412 4653", None, true, "dc008fda46e2e64002cf2f82a4906236282d431c4f75e5b60bfe79fc48546383", SNAP),
    // TikTok's table prints this digest next to the normalized value "janedoe@gmail.com"
    // (its plain-text column says johndoe@gmail.com; the digest is of janedoe@gmail.com).
    (Kind::Email, "JaneDoe@gmail.com", None, false, "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69", TIKTOK),
];

fn region(code: Option<&str>) -> Option<Region> {
    code.map(|c| parse_region(c).unwrap_or_else(|e| panic!("bad region {c:?} in table: {e}")))
}

fn show(result: &Result<String, idmatch::normalize::Reject>) -> String {
    match result {
        Ok(value) => format!("Ok({value:?})"),
        Err(reason) => format!("Err({:?})", reason.code()),
    }
}

fn check(
    profile: Profile,
    kind: Kind,
    input: &str,
    region_code: Option<&str>,
    expected: Expected,
    source: &str,
) -> Option<String> {
    let expected_text = match expected {
        Ok(value) => format!("Ok({value:?})"),
        Err(code) => format!("Err({code:?})"),
    };
    let matches = |result: &Result<String, idmatch::normalize::Reject>| match (result, expected) {
        (Ok(actual), Ok(want)) => actual == want,
        (Err(reason), Err(code)) => reason.code() == code,
        _ => false,
    };
    // Region as a per-record override ...
    let override_result = Normalizer::new(profile, None).normalize(kind, input, region(region_code));
    // ... and as the normalizer's default region.
    let default_result = Normalizer::new(profile, region(region_code)).normalize(kind, input, None);
    let mut failures = Vec::new();
    for (how, result) in [("region override", &override_result), ("default region", &default_result)] {
        if !matches(result) {
            let context = match region_code {
                Some(code) if kind == Kind::Phone => format!(" (region {code}, {how})"),
                None if kind == Kind::Phone => format!(" (no region, {how})"),
                _ => String::new(),
            };
            failures.push(format!(
                "{profile} {kind} {input:?}{context}: got {}, expected {expected_text}\n    source: {source}",
                show(result)
            ));
        }
    }
    // Emails ignore the region, so both runs report the same failure once.
    failures.dedup();
    // Every accepted output must be a fixed point.
    if let Ok(once) = &override_result {
        let twice = Normalizer::new(profile, region(region_code)).normalize(kind, once, None);
        if twice.as_deref() != Ok(once.as_str()) {
            failures.push(format!(
                "{profile} {kind} {input:?}: output {once:?} is not a fixed point (renormalizes to {})\n    source: {source}",
                show(&twice)
            ));
        }
    }
    (!failures.is_empty()).then(|| failures.join("\n"))
}

fn run_table(profile: Profile, kind: Kind, cases: &[(&str, Option<&str>, Expected, &str)]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|&(input, region_code, expected, source)| {
            check(profile, kind, input, region_code, expected, source)
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} {profile} {kind} vectors failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn email_table(
    cases: &[(&'static str, Expected, &'static str)],
) -> Vec<(&'static str, Option<&'static str>, Expected, &'static str)> {
    cases.iter().map(|&(input, expected, source)| (input, None, expected, source)).collect()
}

#[test]
fn email_vectors_idmatch_v1() {
    run_table(Profile::IdmatchV1, Kind::Email, &email_table(EMAIL_CASES));
}

#[test]
fn email_vectors_basic_v1() {
    run_table(Profile::BasicV1, Kind::Email, &email_table(BASIC_EMAIL_CASES));
}

#[test]
fn phone_vectors_idmatch_v1() {
    run_table(Profile::IdmatchV1, Kind::Phone, PHONE_CASES);
}

#[test]
fn phone_vectors_basic_v1() {
    run_table(Profile::BasicV1, Kind::Phone, BASIC_PHONE_CASES);
}

/// `base` with each override replacing the case of the same input and region.
fn with_overrides(
    base: &[(&'static str, Option<&'static str>, Expected, &'static str)],
    overrides: &[(&'static str, Option<&'static str>, Expected, &'static str)],
) -> Vec<(&'static str, Option<&'static str>, Expected, &'static str)> {
    for &(input, region_code, _, _) in overrides {
        assert!(
            base.iter().any(|&(i, r, _, _)| (i, r) == (input, region_code)),
            "override {input:?} ({region_code:?}) matches no base vector"
        );
    }
    base.iter()
        .map(|&case| {
            let (input, region_code, _, _) = case;
            overrides.iter().copied().find(|&(i, r, _, _)| (i, r) == (input, region_code)).unwrap_or(case)
        })
        .collect()
}

#[test]
fn email_vectors_idmatch_v2() {
    let mut cases = email_table(EMAIL_CASES);
    cases.extend(email_table(V2_EMAIL_CASES));
    run_table(Profile::IdmatchV2, Kind::Email, &cases);
}

#[test]
fn phone_vectors_idmatch_v2() {
    let mut cases = with_overrides(PHONE_CASES, V2_PHONE_OVERRIDES);
    cases.extend_from_slice(V2_PHONE_CASES);
    run_table(Profile::IdmatchV2, Kind::Phone, &cases);
}

#[test]
fn idmatch_v1_fails_every_v2_case() {
    // Each v2 case and override tests a fix: idmatch-v1 must give something else (with
    // the region as an override and as the default, as `check` runs it).
    let email = email_table(V2_EMAIL_CASES);
    let tables = [(Kind::Email, &email[..]), (Kind::Phone, V2_PHONE_OVERRIDES), (Kind::Phone, V2_PHONE_CASES)];
    for (kind, cases) in tables {
        for &(input, region_code, expected, source) in cases {
            let failure = check(Profile::IdmatchV1, kind, input, region_code, expected, source);
            assert!(failure.is_some(), "idmatch-v1 already gives {expected:?} for {kind} {input:?}");
        }
    }
}

fn published_digests(profile: Profile) {
    let mut failures = Vec::new();
    for &(kind, input, region_code, strip_plus, digest, source) in PUBLISHED_DIGESTS {
        let normalizer = Normalizer::new(profile, region(region_code));
        let normalized = match normalizer.normalize(kind, input, None) {
            Ok(value) => value,
            Err(reason) => {
                failures.push(format!("{kind} {input:?}: rejected with {}\n    source: {source}", reason.code()));
                continue;
            }
        };
        let hashed = if strip_plus { normalized.strip_prefix('+').unwrap_or(&normalized) } else { &normalized };
        let actual = hex::encode(Sha256::digest(hashed.as_bytes()));
        if actual != digest {
            failures.push(format!(
                "{kind} {input:?}: SHA-256({hashed:?}) = {actual}, published {digest}\n    source: {source}"
            ));
        }
    }
    assert!(failures.is_empty(), "{profile}: published digests not reproduced:\n{}", failures.join("\n"));
}

#[test]
fn published_digests_idmatch_v1() {
    published_digests(Profile::IdmatchV1);
}

#[test]
fn published_digests_idmatch_v2() {
    published_digests(Profile::IdmatchV2);
}

#[test]
fn case_counts() {
    // Keeps the tables from silently shrinking.
    let total = EMAIL_CASES.len() + BASIC_EMAIL_CASES.len() + PHONE_CASES.len() + BASIC_PHONE_CASES.len();
    assert!(total >= 40, "only {total} normalization vectors");
    let v2 = V2_EMAIL_CASES.len() + V2_PHONE_OVERRIDES.len() + V2_PHONE_CASES.len();
    assert!(v2 >= 15, "only {v2} idmatch-v2 vectors");
}
