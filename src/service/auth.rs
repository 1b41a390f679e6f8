//! Who is calling: partners by bearer token (only its SHA-256 is configured) or by
//! client certificate common name; shared by the `Matcher` and `OptOutAdmin`
//! services.

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use super::config::{PartnerPolicy, token_sha256};

/// SHA-256 of the request's bearer token: `None` without an `authorization`
/// header, an error when the header is not `Bearer <token>`.
pub(crate) fn bearer_digest<T>(request: &Request<T>) -> Option<Result<[u8; 32], Status>> {
    let value = request.metadata().get("authorization")?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(token_sha256)
            .ok_or_else(|| Status::unauthenticated("malformed authorization header (expected `Bearer <token>`)")),
    )
}

/// Whether `digest` is some partner's token digest (constant time per comparison).
pub(crate) fn is_partner_token(partners: &[PartnerPolicy], digest: &[u8; 32]) -> bool {
    partners.iter().any(|p| p.token_sha256.is_some_and(|d| bool::from(d.ct_eq(digest))))
}

/// Finds the partner a request's credentials belong to.
pub(crate) fn authenticate<'p, T>(
    partners: &'p [PartnerPolicy],
    request: &Request<T>,
) -> Result<&'p PartnerPolicy, Status> {
    if let Some(digest) = bearer_digest(request) {
        let digest = digest?;
        return partners
            .iter()
            .find(|p| p.token_sha256.is_some_and(|d| bool::from(d.ct_eq(&digest))))
            .ok_or_else(|| Status::unauthenticated("unknown bearer token"));
    }
    if let Some(certs) = request.peer_certs()
        && let Some(cert) = certs.first()
    {
        let cn = common_name(cert.as_ref())
            .ok_or_else(|| Status::unauthenticated("client certificate has no common name"))?;
        return partners
            .iter()
            .find(|p| p.cert_common_name.as_deref() == Some(cn.as_str()))
            .ok_or_else(|| Status::unauthenticated("client certificate is not a configured partner"));
    }
    Err(Status::unauthenticated("no credentials: send a bearer token or a client certificate"))
}

fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject().iter_common_name().next()?.as_str().ok().map(str::to_owned)
}
