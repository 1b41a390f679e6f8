//! Email address rules (see the README's normalization table for the reasoning behind
//! each rule and how it compares with the major platforms' published rules).
//!
//! One code path serves every profile; the [`Profile`] switches rules on or off
//! (Gmail folding in step 8; under idmatch-v2 the compatibility forms of `@` in step
//! 4 and NFKC of the local part in step 5a), so a profile's output changes only where
//! its switch differs. The domain takes the same steps in every profile.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use unicode_general_category::{GeneralCategory, get_general_category};
use unicode_normalization::UnicodeNormalization;

use super::{Profile, Reject, trim};

/// Longest local part, in octets (RFC 5321 §4.5.3.1.1).
const MAX_LOCAL: usize = 64;
/// Longest address, in octets (RFC 5321 path limit less the angle brackets).
const MAX_ADDRESS: usize = 254;
/// Inputs longer than this are rejected before any Unicode work is done.
const MAX_INPUT: usize = 1024;

/// Normalizes one email address under `profile` into `out` (which the caller has
/// cleared).
pub(super) fn normalize(input: &str, profile: Profile, out: &mut String) -> Result<(), Reject> {
    // 1. Trim whitespace, BOM and zero-width characters at both ends.
    let trimmed = trim(input);
    if trimmed.is_empty() {
        return Err(Reject::Empty);
    }
    if trimmed.len() > MAX_INPUT {
        return Err(Reject::TooLong);
    }
    // 2. Unicode NFC (ASCII is always NFC).
    let nfc: Cow<str> = if trimmed.is_ascii() || unicode_normalization::is_nfc(trimmed) {
        Cow::Borrowed(trimmed)
    } else {
        Cow::Owned(trimmed.nfc().collect())
    };
    // 3. No whitespace, control or format characters may remain inside.
    if nfc.chars().any(is_forbidden_inside) {
        return Err(Reject::BadCharacter);
    }
    // 4. Exactly one `@`. Profiles that fold compatibility forms (idmatch-v2) also
    //    split at a character whose NFKC form is `@`: full-width `＠`, small `﹫`.
    let (local, domain) = if profile.folds_compatibility() && !nfc.is_ascii() {
        one_at(nfc.split(|c: char| c == '@' || (!c.is_ascii() && c.nfkc().eq(['@']))))?
    } else {
        one_at(nfc.split('@'))?
    };
    // 7. Domain to its IDNA ASCII form, checked (done before the local part so that
    //    Gmail folding can depend on the canonical domain).
    with_ascii_domain(domain, |domain| finish(local, domain, profile, out))
}

/// Step 4: the local part and domain, from the pieces between separators.
fn one_at<'a>(mut parts: impl Iterator<Item = &'a str>) -> Result<(&'a str, &'a str), Reject> {
    match (parts.next(), parts.next(), parts.next()) {
        (Some(local), Some(domain), None) => Ok((local, domain)),
        (_, None, _) => Err(Reject::MissingAt),
        _ => Err(Reject::MultipleAt),
    }
}

/// Steps 5, 6, 8 and 9, once the domain is in its checked ASCII form.
fn finish(local: &str, domain: &str, profile: Profile, out: &mut String) -> Result<(), Reject> {
    let gmail = profile.folds_gmail() && (domain == "gmail.com" || domain == "googlemail.com");
    // 5a. Profiles that fold compatibility forms (idmatch-v2): the local part to NFKC,
    //     so that full-width `ｊｏｈｎ` is `john` as it already is in a domain (UTS #46,
    //     step 7, maps compatibility forms in every profile; the domain is left to it).
    let local: Cow<str> =
        if profile.folds_compatibility() && !local.is_ascii() && !unicode_normalization::is_nfkc(local) {
            Cow::Owned(local.nfkc().collect())
        } else {
            Cow::Borrowed(local)
        };
    // 5. Lowercase the local part (locale-independent, Final_Sigma aware).
    // 6. It must be a dot-atom.
    check_dot_atom(&local)?;
    if gmail {
        // 8. Gmail: drop everything from the first `+`, remove dots.
        let kept = local.split('+').next().unwrap_or("");
        push_lowercase(out, kept, |c| c != '.');
        if out.is_empty() {
            return Err(Reject::EmptyLocal);
        }
    } else {
        push_lowercase(out, &local, |_| true);
    }
    // 9. Length limits on the final form.
    if out.len() > MAX_LOCAL {
        return Err(Reject::TooLong);
    }
    out.push('@');
    out.push_str(if gmail { "gmail.com" } else { domain });
    if out.len() > MAX_ADDRESS {
        return Err(Reject::TooLong);
    }
    Ok(())
}

/// Whitespace, control (Cc) or format (Cf) characters, forbidden inside an address.
fn is_forbidden_inside(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_whitespace() || c.is_ascii_control();
    }
    c.is_whitespace() || matches!(get_general_category(c), GeneralCategory::Control | GeneralCategory::Format)
}

/// Appends `s` lowercased to `out`, keeping only characters for which `keep` holds.
/// ASCII takes a byte-wise fast path; anything else uses `str::to_lowercase`, which
/// applies the locale-independent Unicode mapping including Final_Sigma.
fn push_lowercase(out: &mut String, s: &str, keep: impl Fn(char) -> bool) {
    if s.is_ascii() {
        out.extend(s.chars().filter(|&c| keep(c)).map(|c| c.to_ascii_lowercase()));
    } else {
        out.extend(s.to_lowercase().chars().filter(|&c| keep(c)));
    }
}

/// RFC 5322 dot-atom: atext runs separated by single dots; RFC 6531 adds any
/// non-ASCII letter, mark or number. Quoted strings and comments are not accepted.
fn check_dot_atom(local: &str) -> Result<(), Reject> {
    if local.is_empty() || local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(Reject::BadLocal);
    }
    if local.chars().all(is_atext_or_dot) { Ok(()) } else { Err(Reject::BadLocal) }
}

fn is_atext_or_dot(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
    }
    use GeneralCategory::*;
    matches!(
        get_general_category(c),
        UppercaseLetter
            | LowercaseLetter
            | TitlecaseLetter
            | ModifierLetter
            | OtherLetter
            | NonspacingMark
            | SpacingMark
            | EnclosingMark
            | DecimalNumber
            | LetterNumber
            | OtherNumber
    )
}

/// Most recently seen domains per thread, with their checked ASCII form: real files
/// repeat a few domains millions of times, and UTS-46 processing is a large share of
/// an email's cost. Bounded: cleared when full.
const DOMAIN_CACHE_MAX: usize = 4096;

thread_local! {
    static DOMAINS: RefCell<HashMap<String, Result<String, Reject>>> = RefCell::new(HashMap::new());
}

/// Calls `f` with the checked ASCII form of `domain` (see [`ascii_domain`]).
fn with_ascii_domain<R>(domain: &str, f: impl FnOnce(&str) -> Result<R, Reject>) -> Result<R, Reject> {
    DOMAINS.with(|cell| {
        let mut cache = cell.borrow_mut();
        if !cache.contains_key(domain) {
            if cache.len() >= DOMAIN_CACHE_MAX {
                cache.clear();
            }
            cache.insert(domain.to_owned(), ascii_domain(domain).map(Cow::into_owned));
        }
        match cache.get(domain) {
            Some(Ok(ascii)) => f(ascii),
            Some(Err(reason)) => Err(*reason),
            None => Err(Reject::BadDomain),
        }
    })
}

/// The domain through IDNA UTS-46 with the same options as
/// `idna::domain_to_ascii_strict` (STD3 ASCII rules, CheckHyphens, VerifyDnsLength),
/// then the structural checks: at least two labels and an alphabetic or `xn--`
/// top-level label. IP literals, underscores and a trailing dot fail here too.
fn ascii_domain(domain: &str) -> Result<Cow<'_, str>, Reject> {
    if domain.is_empty() || domain.starts_with('[') || domain.ends_with('.') {
        return Err(Reject::BadDomain);
    }
    let ascii = Uts46::new()
        .to_ascii(domain.as_bytes(), AsciiDenyList::STD3, Hyphens::Check, DnsLength::Verify)
        .map_err(|_| Reject::BadDomain)?;
    let mut labels = ascii.rsplit('.');
    let tld = labels.next().unwrap_or("");
    let tld_ok = tld.starts_with("xn--") || (!tld.is_empty() && tld.bytes().all(|b| b.is_ascii_alphabetic()));
    if !tld_ok || labels.next().is_none() {
        return Err(Reject::BadDomain);
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: Profile = Profile::IdmatchV1;
    const BASIC: Profile = Profile::BasicV1;
    const V2: Profile = Profile::IdmatchV2;

    fn norm(input: &str, profile: Profile) -> Result<String, Reject> {
        let mut out = String::new();
        normalize(input, profile, &mut out).map(|()| out)
    }

    #[test]
    fn trims_and_lowercases() {
        assert_eq!(norm("  Alice.Smith@Example.COM \u{FEFF}", V1).unwrap(), "alice.smith@example.com");
        assert_eq!(norm("\u{200B}bob@example.org\t", V1).unwrap(), "bob@example.org");
    }

    #[test]
    fn nfc_makes_composed_and_decomposed_agree() {
        let composed = norm("jos\u{E9}@example.com", V1).unwrap();
        let decomposed = norm("jose\u{301}@example.com", V1).unwrap();
        assert_eq!(composed, decomposed);
    }

    #[test]
    fn rejects_inner_whitespace_control_and_format() {
        assert_eq!(norm("a b@example.com", V1), Err(Reject::BadCharacter));
        assert_eq!(norm("ab\u{0007}@example.com", V1), Err(Reject::BadCharacter));
        assert_eq!(norm("a\u{200B}b@example.com", V1), Err(Reject::BadCharacter));
        assert_eq!(norm("a\u{00A0}b@example.com", V1), Err(Reject::BadCharacter));
    }

    #[test]
    fn at_sign_rules() {
        assert_eq!(norm("alice.example.com", V1), Err(Reject::MissingAt));
        assert_eq!(norm("a@b@example.com", V1), Err(Reject::MultipleAt));
        assert_eq!(norm("", V1), Err(Reject::Empty));
        assert_eq!(norm("   ", V1), Err(Reject::Empty));
    }

    #[test]
    fn final_sigma_lowercasing() {
        assert_eq!(norm("ΟΔΟΣ@example.gr", V1).unwrap(), "οδος@example.gr");
    }

    #[test]
    fn dot_atom() {
        assert_eq!(norm(".a@example.com", V1), Err(Reject::BadLocal));
        assert_eq!(norm("a.@example.com", V1), Err(Reject::BadLocal));
        assert_eq!(norm("a..b@example.com", V1), Err(Reject::BadLocal));
        assert_eq!(norm("\"a b\"@example.com", V1), Err(Reject::BadCharacter));
        assert_eq!(norm("\"ab\"@example.com", V1), Err(Reject::BadLocal));
        assert_eq!(norm("a(comment)@example.com", V1), Err(Reject::BadLocal));
        assert_eq!(norm("@example.com", V1), Err(Reject::BadLocal));
        assert_eq!(norm("o'brien+news@example.com", V1).unwrap(), "o'brien+news@example.com");
        assert_eq!(norm("Jürgen@example.de", V1).unwrap(), "jürgen@example.de");
    }

    #[test]
    fn idna_domains_agree() {
        assert_eq!(norm("info@Müller.de", V1).unwrap(), "info@xn--mller-kva.de");
        assert_eq!(norm("info@xn--mller-kva.de", V1).unwrap(), "info@xn--mller-kva.de");
    }

    #[test]
    fn bad_domains() {
        for d in [
            "a@localhost",
            "a@[127.0.0.1]",
            "a@1.2.3.4",
            "a@ex_ample.com",
            "a@example.com.",
            "a@",
            "a@-x.com",
            "a@x..com",
            "a@example.c0m",
        ] {
            assert_eq!(norm(d, V1), Err(Reject::BadDomain), "{d}");
        }
    }

    #[test]
    fn gmail_folding() {
        assert_eq!(norm("John.Smith+promo@GoogleMail.com", V1).unwrap(), "johnsmith@gmail.com");
        assert_eq!(norm("j.o.h.n@gmail.com", V1).unwrap(), "john@gmail.com");
        assert_eq!(norm("+tag@gmail.com", V1), Err(Reject::EmptyLocal));
        assert_eq!(norm(".+x@gmail.com", V1), Err(Reject::BadLocal));
        // Other domains keep dots and plus-tags.
        assert_eq!(norm("john.smith+promo@example.com", V1).unwrap(), "john.smith+promo@example.com");
        // Without folding (basic-v1) Gmail is like any other domain.
        assert_eq!(norm("John.Smith+promo@googlemail.com", BASIC).unwrap(), "john.smith+promo@googlemail.com");
    }

    #[test]
    fn length_limits() {
        let local64 = "a".repeat(64);
        assert!(norm(&format!("{local64}@example.com"), V1).is_ok());
        assert_eq!(norm(&format!("{local64}a@example.com"), V1), Err(Reject::TooLong));
        let long_domain = format!("{}.com", vec!["b".repeat(60); 4].join("."));
        assert_eq!(norm(&format!("{local64}@{long_domain}"), V1), Err(Reject::TooLong));
        assert_eq!(norm(&"x".repeat(5000), V1), Err(Reject::TooLong));
    }

    #[test]
    fn output_is_a_fixed_point() {
        for input in ["  Alice.Smith+x@Example.COM", "info@Müller.de", "J.Doe+1@googlemail.com", "ΟΔΟΣ@example.gr"]
        {
            let once = norm(input, V1).unwrap();
            assert_eq!(norm(&once, V1).unwrap(), once);
        }
    }

    #[test]
    fn v2_folds_full_width_local_parts() {
        // idmatch-v1 folds a full-width domain (UTS #46) but not the local part, and
        // does not read a full-width `＠` as `@`.
        assert_eq!(norm("ｊｏｈｎ@example.com", V1).unwrap(), "ｊｏｈｎ@example.com");
        assert_eq!(norm("john@ｅｘａｍｐｌｅ.com", V1).unwrap(), "john@example.com");
        assert_eq!(norm("ｊｏｈｎ＠example.com", V1), Err(Reject::MissingAt));
        for input in
            ["ｊｏｈｎ@example.com", "ＪＯＨＮ@example.com", "ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ", "john@example.com"]
        {
            assert_eq!(norm(input, V2).unwrap(), "john@example.com", "{input}");
        }
        // Other compatibility forms: ligatures, superscripts, circled digits.
        assert_eq!(norm("\u{FB01}nn\u{B2}@example.com", V2).unwrap(), "finn2@example.com");
        assert_eq!(norm("agent\u{2466}@example.com", V2).unwrap(), "agent7@example.com");
        // The small commercial at is an `@` too.
        assert_eq!(norm("john\u{FE6B}example.com", V2).unwrap(), "john@example.com");
        // Folding happens before the Gmail rules, which then see the ASCII dots and `+`.
        assert_eq!(norm("ｊ．ｄｏｅ＋ｐｒｏｍｏ@gmail.com", V2).unwrap(), "jdoe@gmail.com");
        // A full-width space is still a space inside the address.
        assert_eq!(norm("john\u{3000}doe@example.com", V2), Err(Reject::BadCharacter));
    }

    #[test]
    fn v2_is_v1_everywhere_else() {
        for input in [
            "  Alice.Smith@Example.COM \u{FEFF}",
            "jose\u{301}@example.com",
            "ΟΔΟΣ@example.gr",
            "Jürgen@example.de",
            "info@Müller.de",
            "John.Smith+promo@GoogleMail.com",
            "+tag@gmail.com",
            "a..b@example.com",
            "a b@example.com",
            "a@localhost",
        ] {
            assert_eq!(norm(input, V2), norm(input, V1), "{input}");
        }
    }

    #[test]
    fn v2_leaves_every_domain_to_uts46_as_v1_does() {
        // NFKC before UTS #46 would differ for a few characters (U+03F2 ϲ: NFKC gives
        // final ς, which UTS #46 keeps, where UTS #46 alone gives σ).
        // The forms of `@` itself (＠, ﹫) are separators under idmatch-v2: `multiple_at`.
        for c in ('\u{80}'..='\u{FFFF}').filter(|c| !c.nfkc().eq(['@'])) {
            let input = format!("ab@a{c}b.com");
            assert_eq!(norm(&input, V2), norm(&input, V1), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn v2_output_is_a_fixed_point_for_every_bmp_character() {
        // Lowercasing after NFKC must not leave a string that NFKC would change again.
        for c in '\u{80}'..='\u{FFFF}' {
            let input = format!("a{c}b@example.com");
            if let Ok(once) = norm(&input, V2) {
                assert_eq!(norm(&once, V2).as_ref(), Ok(&once), "U+{:04X}", c as u32);
            }
        }
    }
}
