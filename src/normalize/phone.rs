//! Phone number rules: libphonenumber metadata (through `rlibphonenumber`) decides
//! what is a valid number; the output is E.164 with a leading `+`.
//!
//! One code path serves every profile; the [`Profile`] switches the idmatch-v2 rules
//! on (the `phone-context` of a `tel:` URI, region-independent placeholders), so
//! idmatch-v1 and basic-v1 take exactly the steps they always did.

use rlibphonenumber::{NotANumberError, PHONE_NUMBER_UTIL, ParseError, PhoneNumber, PhoneNumberFormat, Region};

use super::{Profile, Reject, trim};

/// Inputs longer than this are rejected before parsing (libphonenumber's own limit
/// is 250; no real number with an extension comes close to 64).
const MAX_INPUT: usize = 64;

/// The characters libphonenumber reads as the `+` of a global number.
const PLUS_SIGNS: [char; 2] = ['+', '\u{FF0B}'];

/// Normalizes one phone number under `profile` into `out` (which the caller has
/// cleared).
pub(super) fn normalize(input: &str, region: Option<Region>, profile: Profile, out: &mut String) -> Result<(), Reject> {
    // 1. Trim; drop a `tel:` prefix, URI parameters and a trailing extension (keeping
    //    the `phone-context` parameter's value under idmatch-v2).
    let trimmed = trim(input);
    if trimmed.is_empty() {
        return Err(Reject::Empty);
    }
    if trimmed.chars().count() > MAX_INPUT {
        return Err(Reject::TooLong);
    }
    let (number, phone_context) = split_tel_uri(trimmed);
    let number = strip_extension(number).trim_matches(super::is_trimmable);
    if number.is_empty() {
        return Err(Reject::NotANumber);
    }
    // 2. Letters are never turned into digits.
    if number.chars().any(char::is_alphabetic) {
        return Err(Reject::LettersInNumber);
    }
    let context = if profile.honours_phone_context() { global_prefix(number, phone_context)? } else { None };
    // 3. Parse in the record's region (or the default), 4. retry `00` as `+`.
    let parsed = match parse_valid(number, region, context, profile) {
        Ok(n) => n,
        Err(first) => match number.strip_prefix("00") {
            Some(rest) => {
                let mut plus = String::with_capacity(rest.len() + 1);
                plus.push('+');
                plus.push_str(rest);
                // A `+` number is global: no phone-context applies to it. The first
                // parse's reason stands, unless the retry found a placeholder.
                parse_valid(&plus, region, None, profile)
                    .map_err(|retry| if retry == Reject::PlaceholderNumber { retry } else { first })?
            }
            None => return Err(first),
        },
    };
    // 6. E.164.
    out.push_str(&parsed.format_as(PhoneNumberFormat::E164));
    Ok(())
}

/// Step 1a (idmatch-v2): what the `phone-context` of a `tel:` URI says about a local
/// `number` (RFC 3966 §5.1.5), checked with libphonenumber's RFC 3966 syntax.
///
/// * A global number prefix (`+1`, `+44-20`) is returned, to be put before the
///   number: libphonenumber then reads the number as national in that country,
///   whatever the region.
/// * A domain name names no country, and the region is not guessed instead:
///   `unknown_country`.
/// * A value that is neither (empty, `+`, `a b`) makes the URI malformed:
///   `not_a_number`.
///
/// A global (`+`) number ignores the parameter, which RFC 3966 defines only for local
/// numbers.
fn global_prefix<'a>(number: &str, phone_context: Option<&'a str>) -> Result<Option<&'a str>, Reject> {
    match phone_context {
        None => Ok(None),
        Some(_) if number.starts_with(PLUS_SIGNS) => Ok(None),
        Some(context) if context.starts_with('+') => Ok(Some(context)),
        Some(context) => match PHONE_NUMBER_UTIL.parse(local_tel_uri(number, context), None) {
            Err(ParseError::NotANumber(NotANumberError::InvalidPhoneContext)) => Err(Reject::NotANumber),
            _ => Err(Reject::UnknownCountry),
        },
    }
}

/// The RFC 3966 form of a local number and its context, for libphonenumber to read.
fn local_tel_uri(number: &str, context: &str) -> String {
    format!("tel:{number};phone-context={context}")
}

/// Steps 3 and 5: parse (with a phone-context prefix, see [`global_prefix`]), refuse
/// placeholders where the profile does, then require full validity (not merely a
/// possible length), so that placeholders such as 555-555-5555 never mass-match.
fn parse_valid(
    number: &str,
    region: Option<Region>,
    context: Option<&str>,
    profile: Profile,
) -> Result<PhoneNumber, Reject> {
    let parsed = match context {
        // libphonenumber implements RFC 3966: it checks the parameter's syntax and
        // reads the number after its global prefix.
        Some(prefix) => PHONE_NUMBER_UTIL.parse(local_tel_uri(number, prefix), region),
        None => PHONE_NUMBER_UTIL.parse(number, region),
    };
    let parsed = parsed.map_err(|e| match e {
        ParseError::InvalidCountryCode => Reject::UnknownCountry,
        ParseError::NotANumber(_) => Reject::NotANumber,
        ParseError::TooShortAfterIdd | ParseError::TooShortNsn | ParseError::TooLongNsn => Reject::InvalidNumber,
    })?;
    if profile.refuses_placeholders() && is_placeholder(&parsed) {
        return Err(Reject::PlaceholderNumber);
    }
    if parsed.is_valid() { Ok(parsed) } else { Err(Reject::InvalidNumber) }
}

/// A placeholder: the national significant number (country code and trunk prefix
/// removed by the parser) is one digit repeated, such as 555 555 5555 or 000 000 0000.
/// Decided on the digits alone, so it cannot depend on the region the number was read
/// in: 555-555-5555 is invalid in the US but a valid UK (+44 55) number.
fn is_placeholder(number: &PhoneNumber) -> bool {
    let nsn = number.get_national_significant_number();
    let mut digits = nsn.bytes();
    match digits.next() {
        Some(first) => digits.all(|d| d == first),
        None => false,
    }
}

/// `tel:+1-201-555-0123;ext=1234` → (`+1-201-555-0123`, no context);
/// `tel:201-555-0123;phone-context=+1` → (`201-555-0123`, `+1`). The scheme and the
/// parameter name are matched case-insensitively (RFC 3966 §3); every other
/// parameter is dropped. A value that is not a `tel:` URI is returned whole.
fn split_tel_uri(s: &str) -> (&str, Option<&str>) {
    match s.get(..4) {
        Some(prefix) if prefix.eq_ignore_ascii_case("tel:") => {
            let mut parts = s[4..].split(';');
            let number = parts.next().unwrap_or("");
            let context = parts.find_map(|param| {
                let (name, value) = param.split_once('=')?;
                name.eq_ignore_ascii_case("phone-context").then_some(value)
            });
            (number, context)
        }
        _ => (s, None),
    }
}

/// Drops a trailing extension: `#123`, `x123`, `ext 123`, `ext. 12 34`,
/// `extension 123`, `x１２`, or a bare trailing `#`. After the marker only digits
/// (any script) and spaces or dashes may follow, so `555-0199 xyz` keeps its
/// letters and is rejected afterwards.
fn strip_extension(s: &str) -> &str {
    let lower_markers = ["extension", "ext.", "ext", "x", "#"];
    for (i, _) in s.char_indices() {
        let rest = &s[i..];
        for marker in lower_markers {
            let Some(head) = rest.get(..marker.len()) else { continue };
            if !head.eq_ignore_ascii_case(marker) {
                continue;
            }
            let tail = rest[marker.len()..].trim_start_matches([' ', '.', ':', '=']);
            let digits_only =
                tail.chars().any(char::is_numeric) && tail.chars().all(|c| c.is_numeric() || c == ' ' || c == '-');
            if i > 0 && (digits_only || (marker == "#" && tail.is_empty())) {
                return &s[..i];
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under idmatch-v1 (the tests below written before idmatch-v2 existed).
    fn norm(input: &str, region: Option<&str>) -> Result<String, Reject> {
        norm_in(Profile::IdmatchV1, input, region)
    }

    fn norm_in(profile: Profile, input: &str, region: Option<&str>) -> Result<String, Reject> {
        let region = region.map(|r| Region::from_code(r).unwrap());
        let mut out = String::new();
        normalize(input, region, profile, &mut out).map(|()| out)
    }

    fn v2(input: &str, region: Option<&str>) -> Result<String, Reject> {
        norm_in(Profile::IdmatchV2, input, region)
    }

    #[test]
    fn e164_from_many_formats() {
        for input in [
            "+1 415 555 2671",
            "(415) 555-2671",
            "415.555.2671",
            "1-415-555-2671",
            "011 1 415 555 2671",
            "tel:+1-415-555-2671",
            "+1 (415) 555-2671 ext. 12",
            "415-555-2671 x99",
            "415 555 2671#7",
        ] {
            assert_eq!(norm(input, Some("US")).unwrap(), "+14155552671", "{input}");
        }
    }

    #[test]
    fn trunk_zero_and_double_zero() {
        assert_eq!(norm("+44 (0)20 7183 8750", None).unwrap(), "+442071838750");
        assert_eq!(norm("020 7183 8750", Some("GB")).unwrap(), "+442071838750");
        assert_eq!(norm("0044 20 7183 8750", Some("US")).unwrap(), "+442071838750");
        assert_eq!(norm("0049 30 901820", None).unwrap(), "+4930901820");
    }

    #[test]
    fn non_ascii_digits() {
        assert_eq!(norm("+１ ４１５ ５５５ ２６７１", None).unwrap(), "+14155552671");
    }

    #[test]
    fn extensions_in_many_forms() {
        for input in [
            "+1 650 555 1212 ext 12 34",
            "+1 650 555 1212 x１２",
            "+1 650 555 1212 #",
            "＋１ （６５０） ５５５－１２１２ ext. １２３４",
        ] {
            assert_eq!(norm(input, None).unwrap(), "+16505551212", "{input}");
        }
    }

    #[test]
    fn letters_are_rejected() {
        assert_eq!(norm("+1234567890A", None), Err(Reject::LettersInNumber));
        assert_eq!(norm("1-800-FLOWERS", Some("US")), Err(Reject::LettersInNumber));
        assert_eq!(norm("555-0199 xyz", Some("US")), Err(Reject::LettersInNumber));
    }

    #[test]
    fn placeholders_and_junk_are_invalid() {
        assert_eq!(norm("555-555-5555", Some("US")), Err(Reject::InvalidNumber));
        assert_eq!(norm("+1 000 000 0000", None), Err(Reject::InvalidNumber));
        assert!(norm("---", Some("US")).is_err());
        assert_eq!(norm("", Some("US")), Err(Reject::Empty));
        assert_eq!(norm("4155552671", None), Err(Reject::UnknownCountry));
        assert_eq!(norm(&"1".repeat(100), Some("US")), Err(Reject::TooLong));
    }

    #[test]
    fn russian_toll_free_keeps_its_digits() {
        assert_eq!(norm("+78005553535", None).unwrap(), "+78005553535");
    }

    #[test]
    fn v2_refuses_placeholders_in_every_region() {
        // idmatch-v1 refuses 555-555-5555 only where libphonenumber finds it invalid.
        assert_eq!(norm("555-555-5555", Some("US")), Err(Reject::InvalidNumber));
        assert_eq!(norm("555-555-5555", Some("GB")).unwrap(), "+445555555555");
        assert_eq!(norm("555-555-5555", Some("DE")).unwrap(), "+495555555555");
        for region in ["US", "GB", "DE", "AT", "FR", "AU", "IN"] {
            assert_eq!(v2("555-555-5555", Some(region)), Err(Reject::PlaceholderNumber), "{region}");
            assert_eq!(v2("000-000-0000", Some(region)), Err(Reject::PlaceholderNumber), "{region}");
        }
        // Every region libphonenumber knows: the same reason, never a number.
        for region in PHONE_NUMBER_UTIL.get_supported_regions() {
            for placeholder in ["555-555-5555", "000-000-0000"] {
                let mut out = String::new();
                let result = normalize(placeholder, Some(region), Profile::IdmatchV2, &mut out);
                assert_eq!(result, Err(Reject::PlaceholderNumber), "{placeholder} in {region:?}: {out}");
            }
        }
        // Written in international form, with a trunk prefix, or with `00`.
        assert_eq!(v2("+44 5555 555555", None), Err(Reject::PlaceholderNumber));
        assert_eq!(v2("05555 555555", Some("GB")), Err(Reject::PlaceholderNumber));
        assert_eq!(v2("0044 5555 555555", Some("US")), Err(Reject::PlaceholderNumber));
        assert_eq!(v2("+1 000 000 0000", None), Err(Reject::PlaceholderNumber));
        // A repeated digit elsewhere is not a placeholder.
        assert_eq!(v2("+1 650 555 1212", None).unwrap(), "+16505551212");
        assert_eq!(v2("+44 20 7183 8750", None).unwrap(), "+442071838750");
    }

    #[test]
    fn v2_honours_a_global_phone_context() {
        let uri = "tel:201-555-0123;phone-context=+1";
        // idmatch-v1 drops the parameter and reads the number in the region.
        assert_eq!(norm(uri, Some("GB")).unwrap(), "+442015550123");
        assert_eq!(norm(uri, None), Err(Reject::UnknownCountry));
        assert_eq!(v2(uri, None).unwrap(), "+12015550123");
        for region in PHONE_NUMBER_UTIL.get_supported_regions() {
            let mut out = String::new();
            normalize(uri, Some(region), Profile::IdmatchV2, &mut out).unwrap();
            assert_eq!(out, "+12015550123", "{region:?}");
        }
        // Scheme and parameter name in any case; other parameters around it.
        assert_eq!(v2("TEL:201-555-0123;Phone-Context=+1", Some("GB")).unwrap(), "+12015550123");
        assert_eq!(v2("tel:201-555-0123;ext=7;phone-context=+1;isub=9", Some("GB")).unwrap(), "+12015550123");
        // A longer prefix (country and area code), and a trunk prefix in the local part.
        assert_eq!(v2("tel:7183-8750;phone-context=+44-20", Some("US")).unwrap(), "+442071838750");
        assert_eq!(v2("tel:020 7183 8750;phone-context=+44", Some("US")).unwrap(), "+442071838750");
        // A global number carries its own country: the parameter is ignored.
        assert_eq!(v2("tel:+1-201-555-0123;phone-context=+44", Some("GB")).unwrap(), "+12015550123");
        // Without the parameter nothing changes.
        assert_eq!(v2("tel:020-7183-8750", Some("GB")).unwrap(), "+442071838750");
        assert_eq!(v2("tel:+1-650-555-1212;ext=12", None).unwrap(), "+16505551212");
    }

    #[test]
    fn v2_refuses_a_domain_or_malformed_phone_context() {
        // A domain name says where the number is local, not which country: no guess.
        assert_eq!(norm("tel:201-555-0123;phone-context=example.com", Some("US")).unwrap(), "+12015550123");
        assert_eq!(v2("tel:201-555-0123;phone-context=example.com", Some("US")), Err(Reject::UnknownCountry));
        assert_eq!(v2("tel:7042;phone-context=example.com", Some("US")), Err(Reject::UnknownCountry));
        // Not a valid RFC 3966 phone-context at all.
        for bad in ["", "+", "exa mple.com", "-example.com", "+1x"] {
            let uri = format!("tel:201-555-0123;phone-context={bad}");
            assert_eq!(v2(&uri, Some("US")), Err(Reject::NotANumber), "{uri}");
        }
    }

    #[test]
    fn v2_is_v1_everywhere_else() {
        for (input, region) in [
            ("+1 415 555 2671", None),
            ("(415) 555-2671", Some("US")),
            ("011 1 415 555 2671", Some("US")),
            ("tel:+1-415-555-2671", None),
            ("+44 (0)20 7183 8750", None),
            ("0049 30 901820", None),
            ("+１ ４１５ ５５５ ２６７１", None),
            ("＋１ （６５０） ５５５－１２１２ ext. １２３４", None),
            ("1-800-FLOWERS", Some("US")),
            ("4155552671", None),
            ("+1 650 555 12", None),
            ("+78005553535", None),
            ("", Some("US")),
        ] {
            assert_eq!(v2(input, region), norm(input, region), "{input}");
        }
    }
}
