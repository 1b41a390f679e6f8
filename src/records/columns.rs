//! Finding the identifier, id and region columns of an input file from its header,
//! or from the names the user gave explicitly.

use crate::normalize::Kind;

/// Header names recognised automatically (compared case-insensitively, trimmed).
const EMAIL_NAMES: &[&str] = &["email", "e-mail", "email_address"];
const PHONE_NAMES: &[&str] = &["phone", "phone_number", "mobile", "msisdn"];
const ID_NAMES: &[&str] = &["id", "record_id", "member_id", "user_id", "customer_id"];
const REGION_NAMES: &[&str] = &["country", "region"];

/// Column names chosen by the user; an empty list means "detect from the header".
#[derive(Clone, Debug, Default)]
pub struct ColumnSpec {
    /// The record id column; `None`: detect (`id`, `record_id`, `member_id`, ...), else line numbers.
    pub id: Option<String>,
    /// Email columns; empty: detect (`email`, `e-mail`, `email_address`).
    pub email: Vec<String>,
    /// Phone columns; empty: detect (`phone`, `phone_number`, `mobile`, `msisdn`).
    pub phone: Vec<String>,
    /// The per-record phone region column; `None`: detect (`country`, `region`).
    pub region: Option<String>,
}

/// Column indices resolved against one file's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnMap {
    /// The record id column; `None` means ids are 1-based line numbers.
    pub id: Option<usize>,
    /// Identifier columns with their kind, in header order.
    pub identifiers: Vec<(usize, Kind)>,
    /// The per-record phone region column.
    pub region: Option<usize>,
    /// The header's names, for reject reports.
    pub names: Vec<String>,
}

impl ColumnMap {
    /// Every column the reader takes a value from: id, identifiers, region.
    pub fn used(&self) -> impl Iterator<Item = usize> + '_ {
        self.id.into_iter().chain(self.identifiers.iter().map(|&(col, _)| col)).chain(self.region)
    }
}

/// Why a header does not give usable columns.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ColumnError {
    /// A column named explicitly is not in the header (the name, trimmed and lowercased).
    #[error("no column named `{0}` in the header")]
    NotFound(String),
    /// No email or phone column was named or detected, and one is required (or there
    /// is no id column either).
    #[error(
        "no identifier column: name one with --email-col/--phone-col, or use a header such as email, phone, mobile, msisdn"
    )]
    NoIdentifiers,
    /// One column (its cleaned header name) would serve as an identifier and as
    /// another role: email and phone, or identifier and id/region.
    #[error("column `{0}` is named as more than one role")]
    Ambiguous(String),
}

/// A header name as compared: trimmed (spaces and a byte-order mark) and lowercased.
pub(super) fn clean(name: &str) -> String {
    name.trim_matches(|c: char| c.is_whitespace() || c == '\u{FEFF}').to_lowercase()
}

impl ColumnSpec {
    /// Resolves this spec against a header row. Unless `require_identifiers` is
    /// false (opt-out lists may hold ids only), at least one identifier column must
    /// be found.
    pub fn resolve(&self, header: &[String], require_identifiers: bool) -> Result<ColumnMap, ColumnError> {
        let names: Vec<String> = header.iter().map(|h| clean(h)).collect();
        let find = |wanted: &str| -> Result<usize, ColumnError> {
            let wanted = clean(wanted);
            names.iter().position(|n| *n == wanted).ok_or(ColumnError::NotFound(wanted))
        };
        let detect = |candidates: &[&str]| -> Vec<usize> {
            names.iter().enumerate().filter(|(_, n)| candidates.contains(&n.as_str())).map(|(i, _)| i).collect()
        };
        let explicit_or_detect = |explicit: &[String], candidates: &[&str]| -> Result<Vec<usize>, ColumnError> {
            if explicit.is_empty() { Ok(detect(candidates)) } else { explicit.iter().map(|c| find(c)).collect() }
        };
        let id = match &self.id {
            Some(name) => Some(find(name)?),
            None => detect(ID_NAMES).first().copied(),
        };
        let region = match &self.region {
            Some(name) => Some(find(name)?),
            None => detect(REGION_NAMES).first().copied(),
        };
        let mut identifiers: Vec<(usize, Kind)> = explicit_or_detect(&self.email, EMAIL_NAMES)?
            .into_iter()
            .map(|i| (i, Kind::Email))
            .chain(explicit_or_detect(&self.phone, PHONE_NAMES)?.into_iter().map(|i| (i, Kind::Phone)))
            .collect();
        identifiers.sort();
        identifiers.dedup();
        if identifiers.is_empty() && (require_identifiers || id.is_none()) {
            return Err(ColumnError::NoIdentifiers);
        }
        for w in identifiers.windows(2) {
            if w[0].0 == w[1].0 {
                return Err(ColumnError::Ambiguous(names[w[0].0].clone()));
            }
        }
        if let (Some(id), Some(region)) = (id, region)
            && id == region
        {
            return Err(ColumnError::Ambiguous(names[id].clone()));
        }
        for role in [id, region].into_iter().flatten() {
            if identifiers.iter().any(|&(i, _)| i == role) {
                return Err(ColumnError::Ambiguous(names[role].clone()));
            }
        }
        Ok(ColumnMap { id, identifiers, region, names })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_column_cannot_be_the_id_and_the_region() {
        let spec = ColumnSpec { id: Some("cc".into()), region: Some("cc".into()), ..ColumnSpec::default() };
        let err = spec.resolve(&header(&["cc", "email"]), true).unwrap_err();
        assert!(matches!(&err, ColumnError::Ambiguous(n) if n == "cc"), "{err}");
    }

    fn header(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn detects_common_names_case_insensitively() {
        let map = ColumnSpec::default()
            .resolve(&header(&["\u{FEFF}Member_ID", "E-Mail", "Mobile", "Country", "name"]), true)
            .unwrap();
        assert_eq!(map.id, Some(0));
        assert_eq!(map.identifiers, vec![(1, Kind::Email), (2, Kind::Phone)]);
        assert_eq!(map.region, Some(3));
    }

    #[test]
    fn explicit_columns_override_detection() {
        let spec = ColumnSpec {
            id: Some("uid".into()),
            email: vec!["work".into(), "home".into()],
            phone: vec![],
            region: None,
        };
        let map = spec.resolve(&header(&["uid", "email", "home", "work", "phone"]), true).unwrap();
        assert_eq!(map.id, Some(0));
        assert_eq!(map.identifiers, vec![(2, Kind::Email), (3, Kind::Email), (4, Kind::Phone)]);
    }

    #[test]
    fn errors_are_precise() {
        let spec = ColumnSpec { email: vec!["mail".into()], ..Default::default() };
        assert_eq!(spec.resolve(&header(&["id", "email"]), true), Err(ColumnError::NotFound("mail".into())));
        assert_eq!(ColumnSpec::default().resolve(&header(&["id", "name"]), true), Err(ColumnError::NoIdentifiers));
        let spec = ColumnSpec { email: vec!["x".into()], phone: vec!["x".into()], ..Default::default() };
        assert_eq!(spec.resolve(&header(&["x"]), true), Err(ColumnError::Ambiguous("x".into())));
    }
}
