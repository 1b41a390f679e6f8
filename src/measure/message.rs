//! The measurement protocol's messages and their byte-exact encoding
//! (docs/PROTOCOL.md §12.3). Every count is big-endian; decoding checks every length
//! before allocating and refuses trailing bytes.
//!
//! The state machines take and return these typed messages, by direction (like
//! the matching engines' [`crate::psi::OwnerMessage`] and
//! [`crate::psi::PartnerMessage`]): [`super::Owner`] sends [`OwnerMessage`]s and
//! takes [`PartnerMessage`]s, [`super::Partner`] the reverse. Only a transport
//! turns them into bytes and back ([`encode`] and [`decode`], over [`Message`],
//! either side's; the gRPC framing, `service::measure_wire`, is the one caller). A
//! message is well-formed when its `validate` accepts it: [`decode`] yields only
//! such messages, [`encode`] refuses any other, and the state machines check every
//! message they are given, so a message built in memory cannot make them index out
//! of bounds either.

use crate::psi::message::{ELEMENT_LEN, Element};

use super::elgamal::{CIPHERTEXT_LEN, LIMBS};
use super::proof::PEOPLE_PER_PROOF;

/// Largest number of identifier elements in one bundle (one person or exposure record).
pub const MAX_BUNDLE: u8 = 16;
/// Largest number of exposure groups.
pub const MAX_GROUPS: usize = 16;
/// Largest group label, in bytes of UTF-8.
pub const MAX_LABEL: usize = 64;
/// Bytes of one person's encrypted value: [`LIMBS`] ciphertexts.
pub const VALUE_LEN: usize = CIPHERTEXT_LEN * LIMBS;
/// Bytes of one group's masked sum (tag 6) or decryption shares (tag 7): [`LIMBS`]
/// points.
pub const MASKED_LEN: usize = ELEMENT_LEN * LIMBS;

/// Message tags (the first byte of every message).
pub mod tag {
    /// Owner → partner: public key and the people's blinded bundles with encrypted values.
    pub const PEOPLE: u8 = 1;
    /// Partner → owner: group labels and the exposure records' blinded bundles.
    pub const EXPOSURES: u8 = 2;
    /// Owner → partner: the exposure bundles blinded again, shuffled.
    pub const REBLINDED: u8 = 3;
    /// Partner → owner: per group, its size and the matched counts with encrypted sums.
    pub const SUMS: u8 = 4;
    /// Owner → partner: the released figures (JSON), when the owner decrypted them
    /// and the partner learns them too (learner `both`).
    pub const RELEASE: u8 = 5;
    /// Partner → owner (learner `partner`): per group its size and each limb's sum
    /// masked to `C1 + t·Y` (its `C2` stays with the partner); no counts.
    pub const MASKED: u8 = 6;
    /// Owner → partner (learner `partner`): the noise bounds, then per group the
    /// decryption shares of the masked limbs.
    pub const SHARES: u8 = 7;
}

/// Tag 1: `Y`, the blinding point `B = b·G`, the bundle size `k`, per person `k` elements `b·P(t)` and the
/// encrypted value limbs, then the range proofs of the values (none, or one per
/// [`PEOPLE_PER_PROOF`] people in message order, the last for the rest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct People {
    /// The owner's ElGamal public key `Y`.
    pub public_key: [u8; 32],
    /// `B = b·G` for the owner's blinding scalar `b`: the partner checks its traps
    /// with it ([`crate::measure::trap`]).
    pub blinding_point: [u8; 32],
    /// Elements per person (padded with random elements).
    pub bundle: u8,
    /// `bundle` elements per person, person after person.
    pub elements: Vec<Element>,
    /// One encrypted value (its limbs, `C1 ‖ C2` each) per person.
    pub values: Vec<[u8; VALUE_LEN]>,
    /// The proofs that each value's limbs are in range and well formed
    /// ([`crate::measure::proof`]): empty, or one per chunk of people.
    pub proofs: Vec<Vec<u8>>,
}

/// Tag 2 (and tag 3 without labels): bundles of `k` elements, each with a group index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exposures {
    /// The group labels (tag 2 only; empty in tag 3).
    pub labels: Vec<String>,
    /// Elements per exposure record.
    pub bundle: u8,
    /// One group index per bundle.
    pub groups: Vec<u8>,
    /// `bundle` elements per record, record after record.
    pub elements: Vec<Element>,
}

/// One group's line of tag 4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSum {
    /// Exposure records in the group.
    pub records: u64,
    /// The matched counts and sum; `None` when the partner suppressed the group
    /// (fewer matched people than the minimum aggregate).
    pub matched: Option<Matched>,
}

/// A group's matched figures, as the partner sends them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matched {
    /// Exposure records of the group matching at least one person.
    pub records: u64,
    /// People matching at least one exposure record of the group.
    pub people: u64,
    /// The re-randomized homomorphic sum of those people's values, limb by limb.
    pub sum: [u8; VALUE_LEN],
}

/// One group's line of tag 6: no counts, and a line for every group, suppressed or
/// not, so the owner learns neither.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskedSum {
    /// Exposure records in the group.
    pub records: u64,
    /// Limb by limb, `C1 + t·Y` of the group's sum (uniformly random points for a
    /// group the partner suppresses).
    pub points: [u8; MASKED_LEN],
}

/// Tag 7: the owner's answer to `masked`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shares {
    /// Per limb, the largest absolute noise the owner added (0: no noise): the
    /// partner searches each limb's plaintext from `−bound`.
    pub noise_bounds: [u64; LIMBS],
    /// Per group, limb by limb, the decryption share `x⁻¹·M − η·G` of its masked point.
    pub shares: Vec<[u8; MASKED_LEN]>,
}

/// A decoded message, of either side: what [`encode`] and [`decode`] work on
/// (the state machines take and return [`OwnerMessage`]s and
/// [`PartnerMessage`]s, whose conversions from and into this are free).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Tag 1.
    People(People),
    /// Tag 2.
    Exposures(Exposures),
    /// Tag 3.
    Reblinded(Exposures),
    /// Tag 4: one line per group, in the order of the labels of tag 2.
    Sums(Vec<GroupSum>),
    /// Tag 5: the released figures as UTF-8 JSON.
    Release(Vec<u8>),
    /// Tag 6: one line per group, in the order of the labels of tag 2.
    Masked(Vec<MaskedSum>),
    /// Tag 7.
    Shares(Shares),
}

/// A message the owner sends (tags 1, 3, 5 and 7): what [`super::Owner`] returns
/// and [`super::Partner`] takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerMessage {
    /// Tag 1.
    People(People),
    /// Tag 3.
    Reblinded(Exposures),
    /// Tag 5: the released figures as UTF-8 JSON.
    Release(Vec<u8>),
    /// Tag 7.
    Shares(Shares),
}

/// A message the partner sends (tags 2, 4 and 6): what [`super::Partner`] returns
/// and [`super::Owner`] takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartnerMessage {
    /// Tag 2.
    Exposures(Exposures),
    /// Tag 4: one line per group, in the order of the labels of tag 2.
    Sums(Vec<GroupSum>),
    /// Tag 6: one line per group, in the order of the labels of tag 2.
    Masked(Vec<MaskedSum>),
}

impl OwnerMessage {
    /// The message's name in errors.
    pub fn name(&self) -> &'static str {
        match self {
            OwnerMessage::People(_) => "people",
            OwnerMessage::Reblinded(_) => "reblinded",
            OwnerMessage::Release(_) => "release",
            OwnerMessage::Shares(_) => "shares",
        }
    }

    /// Whether the message is well-formed (see [`Message::validate`]).
    pub fn validate(&self) -> Result<(), MessageError> {
        match self {
            OwnerMessage::People(p) => check_people(p),
            OwnerMessage::Reblinded(x) => check_bundles("reblinded", x),
            OwnerMessage::Release(json) => check_count(json.len()),
            OwnerMessage::Shares(s) => check_lines(s.shares.len()),
        }
    }
}

impl PartnerMessage {
    /// The message's name in errors.
    pub fn name(&self) -> &'static str {
        match self {
            PartnerMessage::Exposures(_) => "exposures",
            PartnerMessage::Sums(_) => "sums",
            PartnerMessage::Masked(_) => "masked",
        }
    }

    /// Whether the message is well-formed (see [`Message::validate`]).
    pub fn validate(&self) -> Result<(), MessageError> {
        match self {
            PartnerMessage::Exposures(x) => check_exposures(x),
            PartnerMessage::Sums(l) => check_lines(l.len()),
            PartnerMessage::Masked(l) => check_lines(l.len()),
        }
    }
}

impl From<OwnerMessage> for Message {
    fn from(message: OwnerMessage) -> Message {
        match message {
            OwnerMessage::People(p) => Message::People(p),
            OwnerMessage::Reblinded(x) => Message::Reblinded(x),
            OwnerMessage::Release(json) => Message::Release(json),
            OwnerMessage::Shares(s) => Message::Shares(s),
        }
    }
}

impl From<PartnerMessage> for Message {
    fn from(message: PartnerMessage) -> Message {
        match message {
            PartnerMessage::Exposures(x) => Message::Exposures(x),
            PartnerMessage::Sums(l) => Message::Sums(l),
            PartnerMessage::Masked(l) => Message::Masked(l),
        }
    }
}

/// A partner's message is no owner's: it is given back.
impl TryFrom<Message> for OwnerMessage {
    type Error = Message;
    fn try_from(message: Message) -> Result<OwnerMessage, Message> {
        match message {
            Message::People(p) => Ok(OwnerMessage::People(p)),
            Message::Reblinded(x) => Ok(OwnerMessage::Reblinded(x)),
            Message::Release(json) => Ok(OwnerMessage::Release(json)),
            Message::Shares(s) => Ok(OwnerMessage::Shares(s)),
            other => Err(other),
        }
    }
}

/// An owner's message is no partner's: it is given back.
impl TryFrom<Message> for PartnerMessage {
    type Error = Message;
    fn try_from(message: Message) -> Result<PartnerMessage, Message> {
        match message {
            Message::Exposures(x) => Ok(PartnerMessage::Exposures(x)),
            Message::Sums(l) => Ok(PartnerMessage::Sums(l)),
            Message::Masked(l) => Ok(PartnerMessage::Masked(l)),
            other => Err(other),
        }
    }
}

/// A count that fits a 4-byte field.
fn check_count(n: usize) -> Result<(), MessageError> {
    if u32::try_from(n).is_ok() { Ok(()) } else { Err(MessageError::TooManyItems(n)) }
}

/// 1 to [`MAX_GROUPS`] group lines (or labels, or shares).
fn check_lines(n: usize) -> Result<(), MessageError> {
    if (1..=MAX_GROUPS).contains(&n) { Ok(()) } else { Err(MessageError::BadGroupCount(n)) }
}

/// `bundle` in 1..=[`MAX_BUNDLE`], and `bundle` elements for each of `items`.
fn check_filled(message: &'static str, bundle: u8, items: usize, elements: usize) -> Result<(), MessageError> {
    if !(1..=MAX_BUNDLE).contains(&bundle) {
        return Err(MessageError::BadBundle(bundle));
    }
    check_count(items)?;
    let expected = items.saturating_mul(usize::from(bundle));
    if elements != expected {
        return Err(MessageError::ElementCount { message, expected, got: elements });
    }
    Ok(())
}

fn check_people(p: &People) -> Result<(), MessageError> {
    check_filled("people", p.bundle, p.values.len(), p.elements.len())?;
    let chunks = p.values.len().div_ceil(PEOPLE_PER_PROOF);
    if !p.proofs.is_empty() && p.proofs.len() != chunks {
        return Err(MessageError::ProofCount { expected: chunks, got: p.proofs.len() });
    }
    p.proofs.iter().try_for_each(|proof| check_count(proof.len()))
}

/// Tag 3 (no labels; the partner checks its group indices against its own).
fn check_bundles(message: &'static str, x: &Exposures) -> Result<(), MessageError> {
    check_filled(message, x.bundle, x.groups.len(), x.elements.len())
}

/// Tag 2: distinct labels of 1 to [`MAX_LABEL`] bytes, group indices within them.
fn check_exposures(x: &Exposures) -> Result<(), MessageError> {
    check_lines(x.labels.len())?;
    for (index, label) in x.labels.iter().enumerate() {
        if label.is_empty() || label.len() > MAX_LABEL || x.labels[..index].contains(label) {
            return Err(MessageError::BadLabel { index });
        }
    }
    if let Some((index, &group)) = x.groups.iter().enumerate().find(|(_, g)| usize::from(**g) >= x.labels.len()) {
        return Err(MessageError::GroupOutOfRange { index, group, groups: x.labels.len() });
    }
    check_bundles("exposures", x)
}

impl Message {
    /// Checks what the encoding itself guarantees: bundle sizes in 1..=[`MAX_BUNDLE`],
    /// `bundle` elements per person or record and one value per person, 1 to
    /// [`MAX_GROUPS`] distinct labels of 1 to [`MAX_LABEL`] bytes, group indices
    /// within the labels, 1 to [`MAX_GROUPS`] group lines, and counts that fit the
    /// 4-byte fields.
    pub fn validate(&self) -> Result<(), MessageError> {
        match self {
            Message::People(p) => check_people(p),
            Message::Exposures(x) => check_exposures(x),
            Message::Reblinded(x) => check_bundles("reblinded", x),
            Message::Sums(l) => check_lines(l.len()),
            Message::Masked(l) => check_lines(l.len()),
            Message::Shares(s) => check_lines(s.shares.len()),
            Message::Release(json) => check_count(json.len()),
        }
    }

    /// The message's name in errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::People(_) => "people",
            Message::Exposures(_) => "exposures",
            Message::Reblinded(_) => "reblinded",
            Message::Sums(_) => "sums",
            Message::Release(_) => "release",
            Message::Masked(_) => "masked",
            Message::Shares(_) => "shares",
        }
    }
}

/// Why bytes are not a well-formed message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// No bytes at all.
    #[error("empty message")]
    Empty,
    /// The first byte is no known tag.
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    /// The message ends before a field it announces.
    #[error("message truncated: {needed} more bytes needed at offset {offset}, {remaining} left")]
    Truncated {
        /// Offset of the field.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left.
        remaining: usize,
    },
    /// Bytes follow the end of the message.
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
    /// The bundle size is 0 or above [`MAX_BUNDLE`].
    #[error("bundle size {0} is not in 1..={MAX_BUNDLE}", MAX_BUNDLE = MAX_BUNDLE)]
    BadBundle(u8),
    /// No group labels, or more than [`MAX_GROUPS`].
    #[error("{0} groups (1 to {MAX_GROUPS} allowed)", MAX_GROUPS = MAX_GROUPS)]
    BadGroupCount(usize),
    /// A label is empty, too long, not UTF-8 or repeated.
    #[error("group label {index} is empty, longer than 64 bytes, not UTF-8 or repeated")]
    BadLabel {
        /// Position of the label.
        index: usize,
    },
    /// A bundle names a group index beyond the labels.
    #[error("bundle {index} names group {group}, but there are {groups} groups")]
    GroupOutOfRange {
        /// Position of the bundle.
        index: usize,
        /// The group index it names.
        group: u8,
        /// The number of groups.
        groups: usize,
    },
    /// A group line's status byte is neither 0 (suppressed) nor 1 (present).
    #[error("group {index}: status byte {status} is neither 0 nor 1")]
    BadStatus {
        /// Position of the group line.
        index: usize,
        /// The byte.
        status: u8,
    },
    /// `people` carries proofs, but not one per chunk of its people.
    #[error("people: {got} range proofs where its people need {expected} (or none)")]
    ProofCount {
        /// One per [`PEOPLE_PER_PROOF`] people, the last for the rest.
        expected: usize,
        /// The proofs in the message.
        got: usize,
    },
    /// A message built in memory whose elements do not fill its bundles exactly
    /// (decoded bytes never are: the count is read, then that many bundles).
    #[error("{message}: {got} elements where its bundles hold {expected}")]
    ElementCount {
        /// The message.
        message: &'static str,
        /// Bundles times the bundle size.
        expected: usize,
        /// Elements present.
        got: usize,
    },
    /// More items than a 4-byte count holds.
    #[error("{0} items; a message holds at most 2^32 - 1")]
    TooManyItems(usize),
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        let remaining = self.bytes.len() - self.offset;
        if n > remaining {
            return Err(MessageError::Truncated { offset: self.offset, needed: n, remaining });
        }
        let out = &self.bytes[self.offset..self.offset + n];
        self.offset += n;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, MessageError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, MessageError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, MessageError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], MessageError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    /// A count of items of `size` bytes each, checked against what is left.
    fn count(&mut self, size: usize) -> Result<usize, MessageError> {
        let n = self.u32()? as usize;
        let remaining = self.bytes.len() - self.offset;
        let needed = n.saturating_mul(size);
        if needed > remaining {
            return Err(MessageError::Truncated { offset: self.offset, needed, remaining });
        }
        Ok(n)
    }
    fn bundle(&mut self) -> Result<u8, MessageError> {
        match self.u8()? {
            b @ 1..=MAX_BUNDLE => Ok(b),
            b => Err(MessageError::BadBundle(b)),
        }
    }
    fn elements(&mut self, n: usize) -> Result<Vec<Element>, MessageError> {
        let bytes = self.take(n * ELEMENT_LEN)?;
        Ok(bytes.chunks_exact(ELEMENT_LEN).map(|c| Element(c.try_into().unwrap_or([0; ELEMENT_LEN]))).collect())
    }
    /// A group count `g` (u8, 1..=16).
    fn groups(&mut self) -> Result<usize, MessageError> {
        match usize::from(self.u8()?) {
            g @ 1..=MAX_GROUPS => Ok(g),
            g => Err(MessageError::BadGroupCount(g)),
        }
    }
    /// `g` group lines of `sums`: records, status, and with status 1 the matched
    /// records, matched people and the sum.
    fn lines(&mut self) -> Result<Vec<GroupSum>, MessageError> {
        let g = self.groups()?;
        let mut lines = Vec::with_capacity(g);
        for index in 0..g {
            let records = self.u64()?;
            let matched = match self.u8()? {
                0 => None,
                1 => Some(Matched { records: self.u64()?, people: self.u64()?, sum: self.array::<VALUE_LEN>()? }),
                status => return Err(MessageError::BadStatus { index, status }),
            };
            lines.push(GroupSum { records, matched });
        }
        Ok(lines)
    }
    fn end(&self) -> Result<(), MessageError> {
        match self.bytes.len() - self.offset {
            0 => Ok(()),
            n => Err(MessageError::TrailingBytes(n)),
        }
    }
}

/// Decodes one message.
pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
    let mut r = Reader { bytes, offset: 0 };
    let tag = r.u8().map_err(|_| MessageError::Empty)?;
    let message = match tag {
        tag::PEOPLE => {
            let public_key = r.array::<32>()?;
            let blinding_point = r.array::<32>()?;
            let bundle = r.bundle()?;
            let k = usize::from(bundle);
            let n = r.count(k * ELEMENT_LEN + VALUE_LEN)?;
            let mut elements = Vec::with_capacity(n * k);
            let mut values = Vec::with_capacity(n);
            for _ in 0..n {
                elements.extend(r.elements(k)?);
                values.push(r.array::<VALUE_LEN>()?);
            }
            let chunks = r.count(4)?;
            let mut proofs = Vec::with_capacity(chunks);
            for _ in 0..chunks {
                let len = r.u32()? as usize;
                proofs.push(r.take(len)?.to_vec());
            }
            Message::People(People { public_key, blinding_point, bundle, elements, values, proofs })
        }
        tag::EXPOSURES | tag::REBLINDED => {
            let labels = if tag == tag::EXPOSURES {
                let g = usize::from(r.u8()?);
                if g == 0 || g > MAX_GROUPS {
                    return Err(MessageError::BadGroupCount(g));
                }
                let mut labels: Vec<String> = Vec::with_capacity(g);
                for index in 0..g {
                    let len = usize::from(r.u8()?);
                    let text = std::str::from_utf8(r.take(len)?).map_err(|_| MessageError::BadLabel { index })?;
                    if text.is_empty() || len > MAX_LABEL || labels.iter().any(|l| l == text) {
                        return Err(MessageError::BadLabel { index });
                    }
                    labels.push(text.to_owned());
                }
                labels
            } else {
                Vec::new()
            };
            let bundle = r.bundle()?;
            let k = usize::from(bundle);
            let n = r.count(1 + k * ELEMENT_LEN)?;
            let mut groups = Vec::with_capacity(n);
            let mut elements = Vec::with_capacity(n * k);
            for index in 0..n {
                let group = r.u8()?;
                if !labels.is_empty() && usize::from(group) >= labels.len() {
                    return Err(MessageError::GroupOutOfRange { index, group, groups: labels.len() });
                }
                groups.push(group);
                elements.extend(r.elements(k)?);
            }
            let body = Exposures { labels, bundle, groups, elements };
            if tag == tag::EXPOSURES { Message::Exposures(body) } else { Message::Reblinded(body) }
        }
        tag::SUMS => Message::Sums(r.lines()?),
        tag::MASKED => {
            let g = r.groups()?;
            let mut lines = Vec::with_capacity(g);
            for _ in 0..g {
                lines.push(MaskedSum { records: r.u64()?, points: r.array::<MASKED_LEN>()? });
            }
            Message::Masked(lines)
        }
        tag::SHARES => {
            let mut noise_bounds = [0u64; LIMBS];
            for bound in &mut noise_bounds {
                *bound = r.u64()?;
            }
            let g = r.groups()?;
            let shares = (0..g).map(|_| r.array::<MASKED_LEN>()).collect::<Result<_, _>>()?;
            Message::Shares(Shares { noise_bounds, shares })
        }
        tag::RELEASE => {
            let n = r.count(1)?;
            Message::Release(r.take(n)?.to_vec())
        }
        other => return Err(MessageError::UnknownTag(other)),
    };
    r.end()?;
    Ok(message)
}

/// The group lines of `sums`.
fn put_lines(out: &mut Vec<u8>, lines: &[GroupSum]) {
    out.push(lines.len() as u8);
    for line in lines {
        out.extend(line.records.to_be_bytes());
        match &line.matched {
            None => out.push(0),
            Some(m) => {
                out.push(1);
                out.extend(m.records.to_be_bytes());
                out.extend(m.people.to_be_bytes());
                out.extend(m.sum);
            }
        }
    }
}

/// Encodes one message; refuses one that is not well-formed ([`Message::validate`]).
pub fn encode(message: &Message) -> Result<Vec<u8>, MessageError> {
    message.validate()?;
    let mut out = Vec::new();
    let put_elements = |out: &mut Vec<u8>, elements: &[Element]| elements.iter().for_each(|e| out.extend(e.0));
    match message {
        Message::People(p) => {
            out.push(tag::PEOPLE);
            out.extend(p.public_key);
            out.extend(p.blinding_point);
            out.push(p.bundle);
            out.extend((p.values.len() as u32).to_be_bytes());
            let k = usize::from(p.bundle);
            for (bundle, value) in p.elements.chunks(k.max(1)).zip(&p.values) {
                put_elements(&mut out, bundle);
                out.extend(value);
            }
            out.extend((p.proofs.len() as u32).to_be_bytes());
            for proof in &p.proofs {
                out.extend((proof.len() as u32).to_be_bytes());
                out.extend(proof);
            }
        }
        Message::Exposures(x) | Message::Reblinded(x) => {
            if let Message::Exposures(_) = message {
                out.push(tag::EXPOSURES);
                out.push(x.labels.len() as u8);
                for label in &x.labels {
                    out.push(label.len() as u8);
                    out.extend(label.as_bytes());
                }
            } else {
                out.push(tag::REBLINDED);
            }
            out.push(x.bundle);
            out.extend((x.groups.len() as u32).to_be_bytes());
            let k = usize::from(x.bundle);
            for (group, bundle) in x.groups.iter().zip(x.elements.chunks(k.max(1))) {
                out.push(*group);
                put_elements(&mut out, bundle);
            }
        }
        Message::Sums(lines) => {
            out.push(tag::SUMS);
            put_lines(&mut out, lines);
        }
        Message::Masked(lines) => {
            out.push(tag::MASKED);
            out.push(lines.len() as u8);
            for line in lines {
                out.extend(line.records.to_be_bytes());
                out.extend(line.points);
            }
        }
        Message::Shares(shares) => {
            out.push(tag::SHARES);
            shares.noise_bounds.iter().for_each(|b| out.extend(b.to_be_bytes()));
            out.push(shares.shares.len() as u8);
            shares.shares.iter().for_each(|s| out.extend(s));
        }
        Message::Release(json) => {
            out.push(tag::RELEASE);
            out.extend((json.len() as u32).to_be_bytes());
            out.extend(json);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_malformed_bytes() {
        let people = Message::People(People {
            public_key: [1; 32],
            blinding_point: [9; 32],
            bundle: 2,
            elements: vec![Element([2; 32]), Element([3; 32])],
            values: vec![[4; VALUE_LEN]],
            proofs: vec![vec![5; 7]],
        });
        let bytes = encode(&people).unwrap();
        assert_eq!(bytes.len(), 1 + 32 + 32 + 1 + 4 + 64 + 128 + 4 + 4 + 7);
        assert_eq!(decode(&bytes).unwrap(), people);
        // By direction: the owner's message converts to its own type and back, and a
        // partner's type refuses it, giving it back.
        let owners = OwnerMessage::try_from(people.clone()).unwrap();
        assert_eq!((owners.name(), owners.validate()), ("people", Ok(())));
        assert_eq!(Message::from(owners), people);
        assert_eq!(PartnerMessage::try_from(people.clone()), Err(people.clone()));
        assert_eq!(decode(&[]), Err(MessageError::Empty));
        assert_eq!(decode(&[9]), Err(MessageError::UnknownTag(9)));
        assert!(matches!(decode(&bytes[..bytes.len() - 1]), Err(MessageError::Truncated { .. })));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(MessageError::TrailingBytes(1)));
        let mut zero_bundle = bytes.clone();
        zero_bundle[65] = 0;
        assert_eq!(decode(&zero_bundle), Err(MessageError::BadBundle(0)));

        let exposures = Message::Exposures(Exposures {
            labels: vec!["test".into(), "control".into()],
            bundle: 1,
            groups: vec![1, 0],
            elements: vec![Element([5; 32]), Element([6; 32])],
        });
        let bytes = encode(&exposures).unwrap();
        assert_eq!(decode(&bytes).unwrap(), exposures);
        let mut bad_group = bytes.clone();
        bad_group[1 + 1 + 5 + 8 + 1 + 4] = 2;
        assert_eq!(decode(&bad_group), Err(MessageError::GroupOutOfRange { index: 0, group: 2, groups: 2 }));

        let sums = Message::Sums(vec![
            GroupSum { records: 10, matched: None },
            GroupSum { records: 7, matched: Some(Matched { records: 3, people: 2, sum: [9; VALUE_LEN] }) },
        ]);
        let bytes = encode(&sums).unwrap();
        assert_eq!(decode(&bytes).unwrap(), sums);
        let mut bad_status = bytes.clone();
        bad_status[10] = 2;
        assert_eq!(decode(&bad_status), Err(MessageError::BadStatus { index: 0, status: 2 }));
        let shares = Message::Shares(Shares { noise_bounds: [5, 0], shares: vec![[7; MASKED_LEN], [8; MASKED_LEN]] });
        let bytes = encode(&shares).unwrap();
        assert_eq!(bytes.len(), 1 + 16 + 1 + 2 * 64);
        assert_eq!(decode(&bytes).unwrap(), shares);
        assert!(matches!(decode(&bytes[..bytes.len() - 1]), Err(MessageError::Truncated { .. })));
        let masked = Message::Masked(vec![MaskedSum { records: 1, points: [3; MASKED_LEN] }]);
        let bytes = encode(&masked).unwrap();
        assert_eq!(bytes.len(), 1 + 1 + 8 + 64);
        assert_eq!(decode(&bytes).unwrap(), masked);
        assert_eq!(decode(&[tag::MASKED, 0]), Err(MessageError::BadGroupCount(0)));
        assert_eq!(
            decode(&[tag::SHARES, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 17]),
            Err(MessageError::BadGroupCount(17))
        );
        // What decoding guarantees, encoding refuses to break (and the state
        // machines refuse in memory): bundles filled exactly, groups within the
        // labels, labels distinct and short, 1 to 16 group lines.
        let Message::Exposures(good) = exposures else { unreachable!() };
        let ill = |edit: &dyn Fn(&mut Exposures)| {
            let mut x = good.clone();
            edit(&mut x);
            encode(&Message::Exposures(x)).unwrap_err()
        };
        let unfilled = ill(&|x| {
            x.elements.pop();
        });
        assert_eq!(unfilled, MessageError::ElementCount { message: "exposures", expected: 2, got: 1 });
        assert_eq!(ill(&|x| x.groups[1] = 2), MessageError::GroupOutOfRange { index: 1, group: 2, groups: 2 });
        assert_eq!(ill(&|x| x.labels[1] = "test".into()), MessageError::BadLabel { index: 1 });
        assert_eq!(ill(&|x| x.labels[0] = "x".repeat(MAX_LABEL + 1)), MessageError::BadLabel { index: 0 });
        assert_eq!(ill(&|x| x.bundle = MAX_BUNDLE + 1), MessageError::BadBundle(MAX_BUNDLE + 1));
        assert_eq!(ill(&|x| x.labels.clear()), MessageError::BadGroupCount(0));
        assert_eq!(Message::Sums(Vec::new()).validate(), Err(MessageError::BadGroupCount(0)));
        // A count far beyond the bytes present is refused before anything is allocated.
        let huge = [tag::REBLINDED, 1, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(decode(&huge), Err(MessageError::Truncated { .. })));
    }
}
