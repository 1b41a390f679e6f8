//! Phone number rules: libphonenumber metadata (through `rlibphonenumber`) decides
//! what is a valid number; the output is E.164 with a leading `+`.

use rlibphonenumber::{PHONE_NUMBER_UTIL, ParseError, PhoneNumber, PhoneNumberFormat, Region};

use super::{Reject, trim};

/// Inputs longer than this are rejected before parsing (libphonenumber's own limit
/// is 250; no real number with an extension comes close to 64).
const MAX_INPUT: usize = 64;

/// Normalizes one phone number into `out` (which the caller has cleared).
pub(super) fn normalize(input: &str, region: Option<Region>, out: &mut String) -> Result<(), Reject> {
    // 1. Trim; drop a `tel:` prefix, URI parameters and a trailing extension.
    let trimmed = trim(input);
    if trimmed.is_empty() {
        return Err(Reject::Empty);
    }
    if trimmed.chars().count() > MAX_INPUT {
        return Err(Reject::TooLong);
    }
    let number = strip_extension(strip_tel_uri(trimmed)).trim_matches(super::is_trimmable);
    if number.is_empty() {
        return Err(Reject::NotANumber);
    }
    // 2. Letters are never turned into digits.
    if number.chars().any(char::is_alphabetic) {
        return Err(Reject::LettersInNumber);
    }
    // 3. Parse in the record's region (or the default), 4. retry `00` as `+`.
    let parsed = match parse_valid(number, region) {
        Ok(n) => n,
        Err(first) => match number.strip_prefix("00") {
            Some(rest) => {
                let mut plus = String::with_capacity(rest.len() + 1);
                plus.push('+');
                plus.push_str(rest);
                parse_valid(&plus, region).map_err(|_| first)?
            }
            None => return Err(first),
        },
    };
    // 6. E.164.
    out.push_str(&parsed.format_as(PhoneNumberFormat::E164));
    Ok(())
}

/// Steps 3 and 5: parse, then require full validity (not merely a possible length),
/// so that placeholders such as 555-555-5555 never mass-match.
fn parse_valid(number: &str, region: Option<Region>) -> Result<PhoneNumber, Reject> {
    let parsed = PHONE_NUMBER_UTIL.parse(number, region).map_err(|e| match e {
        ParseError::InvalidCountryCode => Reject::UnknownCountry,
        ParseError::NotANumber(_) => Reject::NotANumber,
        ParseError::TooShortAfterIdd | ParseError::TooShortNsn | ParseError::TooLongNsn => Reject::InvalidNumber,
    })?;
    if parsed.is_valid() { Ok(parsed) } else { Err(Reject::InvalidNumber) }
}

/// `tel:+1-201-555-0123;ext=1234` → `+1-201-555-0123` (RFC 3966 parameters dropped).
fn strip_tel_uri(s: &str) -> &str {
    match s.get(..4) {
        Some(prefix) if prefix.eq_ignore_ascii_case("tel:") => {
            let rest = &s[4..];
            rest.split(';').next().unwrap_or(rest)
        }
        _ => s,
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

    fn norm(input: &str, region: Option<&str>) -> Result<String, Reject> {
        let region = region.map(|r| Region::from_code(r).unwrap());
        let mut out = String::new();
        normalize(input, region, &mut out).map(|()| out)
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
}
