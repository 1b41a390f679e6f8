//! The owner's side of a match, as a state machine: feed it the partner's messages
//! with [`Owner::receive`], send what [`Owner::poll_outgoing`] returns. Every
//! transport (in-memory, gRPC) drives this same code.
//!
//! Order of work: after the hello, the owner re-blinds the partner's elements chunk
//! by chunk as they arrive; once all have arrived it sends its own blinded elements
//! (computed lazily, one chunk per poll), then, in `owner`/`both` modes, receives
//! them back re-blinded by the partner and marks its matches.

use std::collections::{HashSet, VecDeque};

use rand::seq::SliceRandom;

use super::error::{ProtocolError, SetupError, untrusted};
use super::group::BlindingKey;
use super::message::{Accept, Element, Hello, OwnerMessage, PROTOCOL_VERSION, PartnerMessage, Summary};
use super::protocol::{Protocol, names};
use super::reveal::Reveal;
use super::set::PreparedSet;
use crate::normalize::Profile;
use crate::token::KeyFingerprint;

/// What the owner accepts.
#[derive(Clone, Debug)]
pub struct OwnerConfig {
    /// The campaign id a hello must name.
    pub campaign: String,
    /// The normalization profile a hello must name.
    pub profile: Profile,
    /// Reveal modes this partner may ask for.
    pub allowed_reveals: Vec<Reveal>,
    /// Smallest partner set accepted, in distinct tokens (probing protection).
    pub min_partner_set: u64,
    /// Largest partner set accepted, in distinct tokens.
    pub max_partner_set: u64,
    /// Largest chunk, in elements, accepted from the partner (capped at
    /// [`MAX_CHUNK`](super::message::MAX_CHUNK); must not be 0).
    pub max_chunk: u32,
    /// Chunk size, in elements, the owner itself sends (capped at
    /// [`MAX_CHUNK`](super::message::MAX_CHUNK); must not be 0).
    pub send_chunk: u32,
    /// The campaign key's fingerprint: a hello must carry the same one. `None` skips
    /// the check (engine tests only; the server and `idmatch match` always set it).
    pub key_fingerprint: Option<KeyFingerprint>,
    /// The engines this owner allows; [`OwnerConfig::check_hello`] picks the first
    /// of the hello's offer that is allowed and offers its reveal mode. (An
    /// [`Owner`], the ECDH state machine, keeps only `ecdh` of these.)
    pub allowed_protocols: Vec<Protocol>,
}

impl OwnerConfig {
    /// A permissive configuration for local matches: every reveal mode, any set size.
    pub fn local(campaign: &str, profile: Profile) -> OwnerConfig {
        OwnerConfig {
            campaign: campaign.to_owned(),
            profile,
            allowed_reveals: Reveal::ALL.to_vec(),
            min_partner_set: 0,
            max_partner_set: u64::MAX,
            max_chunk: super::message::MAX_CHUNK,
            send_chunk: super::message::DEFAULT_CHUNK,
            key_fingerprint: None,
            allowed_protocols: vec![Protocol::Ecdh],
        }
    }

    /// Requires hellos to carry `fingerprint`.
    pub fn with_key_fingerprint(mut self, fingerprint: KeyFingerprint) -> OwnerConfig {
        self.key_fingerprint = Some(fingerprint);
        self
    }

    /// The checks on a hello (docs/PROTOCOL.md §6.1), in order; the first that fails
    /// is returned, otherwise the engine to run. Needs nothing but the
    /// configuration, so a server can refuse a hello before it prepares a set.
    pub fn check_hello(&self, hello: &Hello) -> Result<Protocol, ProtocolError> {
        if hello.version != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion { ours: PROTOCOL_VERSION, theirs: hello.version });
        }
        if hello.campaign != self.campaign {
            return Err(ProtocolError::CampaignMismatch {
                ours: self.campaign.clone(),
                theirs: untrusted(&hello.campaign),
            });
        }
        if hello.profile != self.profile.name() {
            return Err(ProtocolError::ProfileMismatch {
                ours: self.profile.name().to_owned(),
                theirs: untrusted(&hello.profile),
            });
        }
        if let Some(ours) = &self.key_fingerprint {
            if hello.key_fingerprint.is_empty() {
                return Err(ProtocolError::KeyFingerprintMissing);
            }
            if !ours.matches(&hello.key_fingerprint) {
                return Err(ProtocolError::KeyMismatch);
            }
        }
        if !self.allowed_reveals.contains(&hello.reveal) {
            return Err(ProtocolError::RevealNotAllowed(hello.reveal));
        }
        let offered = hello.offered_protocols();
        let protocol =
            offered.iter().copied().find(|p| p.offers(hello.reveal) && self.allowed_protocols.contains(p)).ok_or_else(
                || {
                    let allowed: Vec<Protocol> =
                        self.allowed_protocols.iter().copied().filter(|p| p.offers(hello.reveal)).collect();
                    ProtocolError::ProtocolNotAllowed {
                        offered: names(offered),
                        reveal: hello.reveal,
                        allowed: names(&allowed),
                    }
                },
            )?;
        // A shard of a run is held to the range by its run's size (docs/PROTOCOL.md
        // §13.3): the range bounds what one match reveals, and a run is one match.
        let (min, max) = (self.min_partner_set, self.max_partner_set);
        let size = hello.run.map_or(hello.partner_set_size, |run| run.run_set_size);
        if size < min || size > max {
            return Err(ProtocolError::SetSizeOutOfRange { size, min, max });
        }
        // In count mode a run's partner learns each shard's intersection size, not
        // only the run's total (docs/PRIVACY.md, "Shards"): each shard is held to the
        // minimum too, so no count it learns is over fewer tokens than a match's.
        if hello.run.is_some() && hello.reveal == Reveal::Count && hello.partner_set_size < min {
            return Err(ProtocolError::SetSizeOutOfRange { size: hello.partner_set_size, min, max });
        }
        Ok(protocol)
    }
}

/// Where the owner is in the protocol. Once the partner's elements are all in, the
/// owner streams its own elements (one chunk per poll) and, in `owner`/`both` modes,
/// accepts them back re-blinded while it is still sending.
#[derive(Debug)]
enum State {
    AwaitingHello,
    ReceivingPartnerElements { received: u64 },
    ExchangingOwnerElements { sent: usize, returned: u64 },
    AwaitingFinished,
    Done,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitingHello => "awaiting hello",
            State::ReceivingPartnerElements { .. } => "receiving partner elements",
            State::ExchangingOwnerElements { .. } => "exchanging owner elements",
            State::AwaitingFinished => "awaiting finished",
            State::Done => "done",
        }
    }
}

/// The owner's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerOutcome {
    /// The reveal mode the partner asked for.
    pub reveal: Reveal,
    /// Distinct partner tokens, as announced in the hello.
    pub partner_set_size: u64,
    /// Distinct owner tokens.
    pub owner_set_size: u64,
    /// Elements the owner blinded with its own tokens (equals `owner_set_size`).
    pub blinded: u64,
    /// `matched[i]` for each of the owner's tokens, in `owner` and `both` modes.
    pub matched: Option<Vec<bool>>,
}

/// The owner's state machine for one match. Its secret scalar lives exactly as long
/// as this value.
pub struct Owner<'a> {
    config: OwnerConfig,
    set: &'a PreparedSet,
    key: BlindingKey,
    state: State,
    outbox: VecDeque<OwnerMessage>,
    reveal: Reveal,
    partner_set_size: u64,
    /// `b·A_i`, kept for shuffling (count) or matching (owner, both).
    reblinded: Vec<Element>,
    reblinded_set: HashSet<Element>,
    matched: Vec<bool>,
    blinded: u64,
}

impl<'a> Owner<'a> {
    /// Starts a match for `set`. Chunk sizes in `config` are capped at
    /// [`MAX_CHUNK`](super::message::MAX_CHUNK) and must not be zero.
    pub fn new(mut config: OwnerConfig, set: &'a PreparedSet) -> Result<Owner<'a>, SetupError> {
        let max = super::message::MAX_CHUNK;
        if config.send_chunk == 0 || config.max_chunk == 0 {
            return Err(SetupError::ZeroChunk);
        }
        config.send_chunk = config.send_chunk.min(max);
        config.max_chunk = config.max_chunk.min(max);
        // This state machine runs only the ECDH engine: a hello that prefers another
        // allowed engine is for [`super::oprf::OprfOwner`], not for this one.
        config.allowed_protocols.retain(|p| *p == Protocol::Ecdh);
        let key = BlindingKey::random().map_err(|e| SetupError::Rng(e.to_string()))?;
        Ok(Owner {
            config,
            set,
            key,
            state: State::AwaitingHello,
            outbox: VecDeque::new(),
            reveal: Reveal::Partner,
            partner_set_size: 0,
            reblinded: Vec::new(),
            reblinded_set: HashSet::new(),
            matched: Vec::new(),
            blinded: 0,
        })
    }

    /// Whether the match has ended successfully.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done) && self.outbox.is_empty()
    }

    /// Handles one message from the partner.
    pub fn receive(&mut self, message: PartnerMessage) -> Result<(), ProtocolError> {
        match (&self.state, message) {
            (State::AwaitingHello, PartnerMessage::Hello(hello)) => self.on_hello(hello),
            (&State::ReceivingPartnerElements { received }, PartnerMessage::PartnerElements(chunk)) => {
                self.on_partner_elements(received, chunk)
            }
            (&State::ExchangingOwnerElements { sent, returned }, PartnerMessage::ReblindedOwnerElements(chunk))
                if self.reveal.partner_returns_owner_elements() =>
            {
                self.on_returned_elements(sent, returned, chunk)
            }
            (State::AwaitingFinished, PartnerMessage::Finished) => {
                let intersection =
                    (self.reveal == Reveal::Both).then(|| self.matched.iter().filter(|&&m| m).count() as u64);
                self.outbox.push_back(OwnerMessage::Summary(Summary {
                    partner_set_size: self.partner_set_size,
                    owner_set_size: self.set.len() as u64,
                    intersection,
                }));
                self.state = State::Done;
                Ok(())
            }
            (state, message) => Err(ProtocolError::UnexpectedMessage { state: state.name(), message: message.name() }),
        }
    }

    /// The next message to send, if any is ready. Blinding of the owner's own
    /// elements happens here, one chunk per call.
    pub fn poll_outgoing(&mut self) -> Option<OwnerMessage> {
        if let Some(message) = self.outbox.pop_front() {
            return Some(message);
        }
        let State::ExchangingOwnerElements { sent, returned } = self.state else { return None };
        if sent == self.set.len() {
            return None;
        }
        let end = (sent + self.config.send_chunk as usize).min(self.set.len());
        let chunk = self.key.blind_tokens(&self.set.tokens()[sent..end]);
        self.blinded += chunk.len() as u64;
        self.state = State::ExchangingOwnerElements { sent: end, returned };
        self.advance_exchange();
        Some(OwnerMessage::OwnerElements(chunk))
    }

    /// The result, once the match is done.
    pub fn outcome(self) -> Option<OwnerOutcome> {
        matches!(self.state, State::Done).then(|| OwnerOutcome {
            reveal: self.reveal,
            partner_set_size: self.partner_set_size,
            owner_set_size: self.set.len() as u64,
            blinded: self.blinded,
            matched: self.reveal.partner_returns_owner_elements().then_some(self.matched),
        })
    }

    fn on_hello(&mut self, hello: Hello) -> Result<(), ProtocolError> {
        self.config.check_hello(&hello)?;
        self.reveal = hello.reveal;
        self.partner_set_size = hello.partner_set_size;
        self.outbox.push_back(OwnerMessage::Accept(Accept {
            version: PROTOCOL_VERSION,
            owner_set_size: self.set.len() as u64,
            max_chunk: self.config.max_chunk,
            protocol: Protocol::Ecdh,
        }));
        self.state = State::ReceivingPartnerElements { received: 0 };
        if self.partner_set_size == 0 {
            self.after_partner_elements();
        }
        Ok(())
    }

    fn on_partner_elements(&mut self, received: u64, chunk: Vec<Element>) -> Result<(), ProtocolError> {
        check_chunk(chunk.len(), self.config.max_chunk, received, self.partner_set_size, "partner elements")?;
        let reblinded = self.key.reblind(&chunk)?;
        let received = received + chunk.len() as u64;
        if self.reveal.partner_returns_owner_elements() {
            self.reblinded_set.extend(reblinded.iter().copied());
        }
        match self.reveal {
            Reveal::Partner | Reveal::Both => self.outbox.push_back(OwnerMessage::ReblindedPartnerElements(reblinded)),
            Reveal::Count => self.reblinded.extend(reblinded),
            Reveal::Owner => {}
        }
        self.state = State::ReceivingPartnerElements { received };
        if received == self.partner_set_size {
            self.after_partner_elements();
        }
        Ok(())
    }

    /// All partner elements are in: in count mode send them back shuffled as a
    /// whole, then start sending the owner's own elements.
    fn after_partner_elements(&mut self) {
        if self.reveal == Reveal::Count {
            let mut all = std::mem::take(&mut self.reblinded);
            all.shuffle(&mut rand::thread_rng());
            for chunk in all.chunks(self.config.send_chunk as usize) {
                self.outbox.push_back(OwnerMessage::ReblindedPartnerElements(chunk.to_vec()));
            }
        }
        if self.reveal.partner_returns_owner_elements() {
            self.matched = vec![false; self.set.len()];
        }
        self.state = State::ExchangingOwnerElements { sent: 0, returned: 0 };
        self.advance_exchange();
    }

    /// The exchange ends when every owner element is sent and, where the partner
    /// returns them, every one has come back.
    fn advance_exchange(&mut self) {
        if let State::ExchangingOwnerElements { sent, returned } = self.state {
            let expected_back = if self.reveal.partner_returns_owner_elements() { sent as u64 } else { 0 };
            if sent == self.set.len() && returned == expected_back {
                self.state = State::AwaitingFinished;
            }
        }
    }

    fn on_returned_elements(&mut self, sent: usize, returned: u64, chunk: Vec<Element>) -> Result<(), ProtocolError> {
        check_chunk(chunk.len(), self.config.max_chunk, returned, sent as u64, "re-blinded owner elements")?;
        for (offset, element) in chunk.iter().enumerate() {
            if self.reblinded_set.contains(element) {
                self.matched[returned as usize + offset] = true;
            }
        }
        self.state = State::ExchangingOwnerElements { sent, returned: returned + chunk.len() as u64 };
        self.advance_exchange();
        Ok(())
    }
}

/// Checks a chunk's size against the limit and the announced total.
pub(super) fn check_chunk(
    len: usize,
    max: u32,
    received: u64,
    expected: u64,
    what: &'static str,
) -> Result<(), ProtocolError> {
    if len == 0 || len > max as usize {
        return Err(ProtocolError::BadChunkSize { len, max });
    }
    if received + len as u64 > expected {
        return Err(ProtocolError::TooManyElements { what, expected, received: received + len as u64 });
    }
    Ok(())
}
