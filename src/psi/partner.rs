//! The partner's side of a match, as a state machine: send what
//! [`Partner::poll_outgoing`] returns, feed the owner's messages to
//! [`Partner::receive`]. Every transport drives this same code.
//!
//! Sending and receiving progress independently: the partner streams its blinded
//! elements (one chunk per poll) while the owner's re-blinded replies come back, so a
//! network transport overlaps the two directions.

use std::collections::{HashSet, VecDeque};

use super::error::{ProtocolError, SetupError};
use super::group::BlindingKey;
use super::message::{
    Accept, DEFAULT_CHUNK, Element, Hello, MAX_CHUNK, OwnerMessage, PROTOCOL_VERSION, PartnerMessage, ShardRun, Summary,
};
use super::owner::check_chunk;
use super::protocol::{Protocol, names};
use super::reveal::Reveal;
use super::set::PreparedSet;
use crate::normalize::Profile;
use crate::token::KeyFingerprint;

/// What the partner asks for.
#[derive(Clone, Debug)]
pub struct PartnerConfig {
    /// The campaign id to ask for.
    pub campaign: String,
    /// The normalization profile the partner's tokens were made under.
    pub profile: Profile,
    /// Who learns what.
    pub reveal: Reveal,
    /// Chunk size the partner prefers to send (capped by the owner's limit).
    pub send_chunk: u32,
    /// The campaign key's fingerprint, sent in the hello so that the owner can refuse
    /// a wrong key before any element is exchanged. `None` sends none (which a
    /// checking owner refuses).
    pub key_fingerprint: Option<KeyFingerprint>,
    /// The engines offered in the hello, most preferred first (default `[ecdh]`).
    /// This state machine runs the match only if the owner chooses `ecdh`; a client
    /// that offers `oprf` too hands an accept naming it to
    /// [`super::oprf::OprfPartner`] instead.
    pub protocols: Vec<Protocol>,
    /// The run this match is one shard of, named in the hello (default: none, a
    /// whole match).
    pub run: Option<ShardRun>,
}

impl PartnerConfig {
    /// A configuration with the default chunk size and no key fingerprint.
    pub fn new(campaign: &str, profile: Profile, reveal: Reveal) -> PartnerConfig {
        PartnerConfig {
            campaign: campaign.to_owned(),
            profile,
            reveal,
            send_chunk: DEFAULT_CHUNK,
            key_fingerprint: None,
            protocols: vec![Protocol::Ecdh],
            run: None,
        }
    }

    /// Sends `fingerprint` in the hello.
    pub fn with_key_fingerprint(mut self, fingerprint: KeyFingerprint) -> PartnerConfig {
        self.key_fingerprint = Some(fingerprint);
        self
    }
}

/// Where the partner is in receiving the owner's messages.
#[derive(Debug)]
enum State {
    AwaitingAccept,
    ReceivingReblinded { received: u64 },
    ReceivingOwnerElements { received: u64 },
    AwaitingSummary,
    Done,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitingAccept => "awaiting accept",
            State::ReceivingReblinded { .. } => "receiving re-blinded partner elements",
            State::ReceivingOwnerElements { .. } => "receiving owner elements",
            State::AwaitingSummary => "awaiting summary",
            State::Done => "done",
        }
    }
}

/// The partner's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartnerOutcome {
    /// The reveal mode asked for.
    pub reveal: Reveal,
    /// Distinct partner tokens.
    pub partner_set_size: u64,
    /// Distinct owner tokens, as announced in the owner's accept.
    pub owner_set_size: u64,
    /// Elements the partner blinded with its own tokens.
    pub blinded: u64,
    /// Distinct matching tokens, where the mode lets the partner know it.
    pub intersection: Option<u64>,
    /// `matched[i]` for each of the partner's tokens, in `partner` and `both` modes.
    pub matched: Option<Vec<bool>>,
}

/// The partner's state machine for one match. Its secret scalar lives exactly as
/// long as this value.
pub struct Partner<'a> {
    config: PartnerConfig,
    set: &'a PreparedSet,
    key: BlindingKey,
    state: State,
    outbox: VecDeque<PartnerMessage>,
    /// Next token to blind and send, once accepted; `None` before the accept.
    next_to_send: Option<usize>,
    chunk: usize,
    owner_set_size: u64,
    /// `b·A_i` as returned by the owner.
    reblinded: Vec<Element>,
    /// `a·B_j` for every owner element.
    owner_double: HashSet<Element>,
    intersection: Option<u64>,
    matched: Option<Vec<bool>>,
}

impl<'a> Partner<'a> {
    /// Starts a match; the hello is the first outgoing message.
    /// A `send_chunk` of zero is refused ([`SetupError::ZeroChunk`]), as by the owner.
    pub fn new(config: PartnerConfig, set: &'a PreparedSet) -> Result<Partner<'a>, SetupError> {
        if config.send_chunk == 0 {
            return Err(SetupError::ZeroChunk);
        }
        let key = BlindingKey::random().map_err(|e| SetupError::Rng(e.to_string()))?;
        let hello = PartnerMessage::Hello(Hello {
            version: PROTOCOL_VERSION,
            campaign: config.campaign.clone(),
            profile: config.profile.name().to_owned(),
            reveal: config.reveal,
            partner_set_size: set.len() as u64,
            key_fingerprint: config.key_fingerprint.map(|f| f.as_bytes().to_vec()).unwrap_or_default(),
            protocols: config.protocols.clone(),
            run: config.run,
        });
        Ok(Partner {
            chunk: config.send_chunk.min(MAX_CHUNK) as usize,
            config,
            set,
            key,
            state: State::AwaitingAccept,
            outbox: VecDeque::from([hello]),
            next_to_send: None,
            owner_set_size: 0,
            reblinded: Vec::new(),
            owner_double: HashSet::new(),
            intersection: None,
            matched: None,
        })
    }

    /// Whether the match has ended successfully.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The next message to send, if any is ready. Blinding of the partner's own
    /// elements happens here, one chunk per call.
    pub fn poll_outgoing(&mut self) -> Option<PartnerMessage> {
        if let Some(message) = self.outbox.pop_front() {
            return Some(message);
        }
        let next = self.next_to_send?;
        if next >= self.set.len() {
            return None;
        }
        let end = (next + self.chunk).min(self.set.len());
        self.next_to_send = Some(end);
        let chunk = self.key.blind_tokens(&self.set.tokens()[next..end]);
        self.advance();
        Some(PartnerMessage::PartnerElements(chunk))
    }

    /// Handles one message from the owner.
    pub fn receive(&mut self, message: OwnerMessage) -> Result<(), ProtocolError> {
        let reveal = self.config.reveal;
        let partner_size = self.set.len() as u64;
        match (&self.state, message) {
            (State::AwaitingAccept, OwnerMessage::Accept(accept)) => {
                check_accept(&accept, &[Protocol::Ecdh])?;
                if accept.max_chunk == 0 {
                    return Err(ProtocolError::BadChunkSize { len: 0, max: 0 });
                }
                self.chunk = self.chunk.min(accept.max_chunk as usize);
                self.owner_set_size = accept.owner_set_size;
                self.next_to_send = Some(0);
                self.state = State::ReceivingReblinded { received: 0 };
                self.advance();
                Ok(())
            }
            (&State::ReceivingReblinded { received }, OwnerMessage::ReblindedPartnerElements(chunk)) => {
                let sent = self.next_to_send.unwrap_or(0) as u64;
                check_chunk(chunk.len(), MAX_CHUNK, received, sent.min(partner_size), "re-blinded partner elements")?;
                self.reblinded.extend(chunk);
                self.state = State::ReceivingReblinded { received: self.reblinded.len() as u64 };
                self.advance();
                Ok(())
            }
            (&State::ReceivingOwnerElements { received }, OwnerMessage::OwnerElements(chunk)) => {
                check_chunk(chunk.len(), MAX_CHUNK, received, self.owner_set_size, "owner elements")?;
                let double = self.key.reblind(&chunk)?;
                if reveal.partner_returns_owner_elements() {
                    self.outbox.push_back(PartnerMessage::ReblindedOwnerElements(double.clone()));
                }
                self.owner_double.extend(double);
                self.state = State::ReceivingOwnerElements { received: received + chunk.len() as u64 };
                self.advance();
                Ok(())
            }
            (State::AwaitingSummary, OwnerMessage::Summary(summary)) => {
                let expected = Summary {
                    partner_set_size: self.set.len() as u64,
                    owner_set_size: self.owner_set_size,
                    intersection: self.intersection,
                };
                check_summary(&summary, &expected)?;
                self.state = State::Done;
                Ok(())
            }
            (state, message) => Err(ProtocolError::UnexpectedMessage { state: state.name(), message: message.name() }),
        }
    }

    /// The result, once the match is done.
    pub fn outcome(self) -> Option<PartnerOutcome> {
        matches!(self.state, State::Done).then(|| PartnerOutcome {
            reveal: self.config.reveal,
            partner_set_size: self.set.len() as u64,
            owner_set_size: self.owner_set_size,
            blinded: self.next_to_send.unwrap_or(0) as u64,
            intersection: self.intersection,
            matched: self.matched,
        })
    }

    /// Moves past phases that are complete (including empty ones).
    fn advance(&mut self) {
        let reveal = self.config.reveal;
        if let State::ReceivingReblinded { received } = self.state {
            let expected = if reveal.owner_returns_partner_elements() { self.set.len() as u64 } else { 0 };
            if received == expected {
                self.state = State::ReceivingOwnerElements { received: 0 };
            }
        }
        let all_sent = self.next_to_send.is_some_and(|n| n >= self.set.len());
        if let State::ReceivingOwnerElements { received } = self.state
            && received == self.owner_set_size
            && all_sent
        {
            self.finish();
        }
    }

    /// Everything has arrived: compare, then tell the owner we are finished.
    fn finish(&mut self) {
        let reveal = self.config.reveal;
        if reveal.partner_learns_count() {
            let matched: Vec<bool> = self.reblinded.iter().map(|e| self.owner_double.contains(e)).collect();
            self.intersection = Some(matched.iter().filter(|&&m| m).count() as u64);
            if reveal.partner_learns_records() {
                self.matched = Some(matched);
            }
        }
        self.reblinded = Vec::new();
        self.owner_double = HashSet::new();
        self.outbox.push_back(PartnerMessage::Finished);
        self.state = State::AwaitingSummary;
    }
}

/// Checks the owner's accept: this build's version, and an engine among `offered`
/// (the ones this side can run now).
pub fn check_accept(accept: &Accept, offered: &[Protocol]) -> Result<(), ProtocolError> {
    if accept.version != PROTOCOL_VERSION {
        return Err(ProtocolError::UnsupportedVersion { ours: PROTOCOL_VERSION, theirs: accept.version });
    }
    if !offered.contains(&accept.protocol) {
        return Err(ProtocolError::UnofferedProtocol { chosen: accept.protocol, offered: names(offered) });
    }
    Ok(())
}

/// Checks the owner's summary against the partner's own counts (`expected`): set
/// sizes equal, and the intersection where both know it.
pub(super) fn check_summary(summary: &Summary, expected: &Summary) -> Result<(), ProtocolError> {
    if summary.partner_set_size != expected.partner_set_size {
        return Err(ProtocolError::SummaryMismatch("partner set size"));
    }
    if summary.owner_set_size != expected.owner_set_size {
        return Err(ProtocolError::SummaryMismatch("owner set size"));
    }
    if let (Some(theirs), Some(ours)) = (summary.intersection, expected.intersection)
        && theirs != ours
    {
        return Err(ProtocolError::SummaryMismatch("intersection size"));
    }
    Ok(())
}
