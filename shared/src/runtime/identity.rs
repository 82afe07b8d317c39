//! Who is deciding, proven rather than claimed. An approver proves their IAM identity the
//! way HashiCorp Vault's AWS IAM auth method and the EKS aws-iam-authenticator do: the
//! CLI signs an STS `GetCallerIdentity` request with the approver's credentials and sends
//! its headers beside the decision; the approve function sends that request to STS
//! itself, at an endpoint its own configuration names, and believes only STS's answer.
//!
//! The signed request carries one more header, [`DECISION_HEADER`], holding the SHA-256 of
//! the decision it vouches for ([`DecisionRequest::digest`]); the signature covers it, so
//! a proof cannot be lifted onto another decision or another execution. Nothing in the
//! event (a Function URL's `requestContext`, a direct invoke's hand-written one) is read
//! for identity.
//!
//! On the local stack the function's STS is the emulator, which answers from the access
//! key named in the request without checking the signature: the path is the same, the
//! proof is only as strong as the emulator.

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::approval::Decision;
use crate::error::{Error, ErrorKind, Result};

/// The signed header that binds an identity proof to one decision (its digest, hex).
pub const DECISION_HEADER: &str = "x-drpilot-decision";

/// The body of the STS request an approver signs; the function sends exactly this body,
/// so a signature over any other STS action does not verify.
pub const STS_BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// The content type the STS query protocol expects (signed by the CLI as sent).
pub const STS_CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// Headers a proof may carry: what SigV4 needs and the binding. Anything else is refused
/// rather than forwarded.
const ACCEPTED_HEADERS: [&str; 5] = [
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "content-type",
    DECISION_HEADER,
];

/// How long STS may take to answer.
const STS_TIMEOUT: Duration = Duration::from_secs(10);

/// What `drpilot approve`/`deny` send to the approve function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    pub execution_arn: String,
    pub decision: Decision,
    #[serde(default)]
    pub approver: Option<String>,
    #[serde(default)]
    pub ticket: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
    /// Why it was denied (required with `deny`).
    #[serde(default)]
    pub reason: Option<String>,
    /// The caller's proof of identity; a request without one is refused.
    #[serde(default)]
    pub identity: Option<IdentityProof>,
}

/// The decision's fields a proof is bound to, in this order.
#[derive(Serialize)]
struct Bound<'a> {
    execution_arn: &'a str,
    decision: Decision,
    approver: Option<&'a str>,
    ticket: Option<&'a str>,
    comment: Option<&'a str>,
    reason: Option<&'a str>,
}

impl DecisionRequest {
    /// SHA-256 (hex) of everything the request decides, its proof left out: the value
    /// of [`DECISION_HEADER`] in the proof that goes with it.
    pub fn digest(&self) -> String {
        let bound = Bound {
            execution_arn: &self.execution_arn,
            decision: self.decision,
            approver: self.approver.as_deref(),
            ticket: self.ticket.as_deref(),
            comment: self.comment.as_deref(),
            reason: self.reason.as_deref(),
        };
        // Serializing a struct of strings cannot fail.
        let bytes = serde_json::to_vec(&bound).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }
}

/// What a starter's proof is bound to: the execution it starts (`<run_id>.<n>`), so a
/// proof cannot start or claim another. The value of [`DECISION_HEADER`] in the proof
/// `drpilot start` puts in the input's `trigger.proof`; bringup verifies it.
pub fn start_digest(execution_name: &str) -> String {
    let bound = serde_json::json!({"start": execution_name});
    hex::encode(Sha256::digest(bound.to_string().as_bytes()))
}

/// The headers of a signed STS `GetCallerIdentity` POST (body [`STS_BODY`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityProof {
    pub headers: BTreeMap<String, String>,
}

/// Who STS says signed the proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerIdentity {
    pub arn: String,
    pub user_id: String,
    pub account: String,
}

/// What makes two approvals two people (the profile's `approver_identity`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersonRule {
    /// An assumed role is one person whatever its session is called: anyone who may
    /// assume the role may also name the session. The safe default.
    #[default]
    Role,
    /// An assumed role's session name tells people apart. Only where the role's trust
    /// policy makes the session name the person's own (IAM Identity Center does; or a
    /// condition on `sts:RoleSessionName` / `sts:SourceIdentity`).
    Session,
}

/// The person behind `arn` under `rule`: an IAM user, a root, a federated user as they
/// are; an assumed role as the role (`…:assumed-role/ROLE`) or with its session.
pub fn person(arn: &str, rule: PersonRule) -> String {
    match (rule, arn.split_once(":assumed-role/")) {
        (PersonRule::Role, Some((head, rest))) => {
            let role = rest.split('/').next().unwrap_or(rest);
            format!("{head}:assumed-role/{role}")
        }
        _ => arn.to_owned(),
    }
}

/// The STS endpoint the approve function sends proofs to: from its configuration (the
/// SDK's endpoint override on the local stack), never from the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StsEndpoint {
    pub url: String,
}

impl StsEndpoint {
    /// `endpoint` when the function is configured with one (the local stack's emulator),
    /// else STS's regional endpoint in `region`.
    pub fn new(endpoint: Option<&str>, region: &str) -> Self {
        let url = match endpoint {
            Some(url) => url.trim_end_matches('/').to_owned() + "/",
            None => format!("https://sts.{region}.amazonaws.com/"),
        };
        Self { url }
    }

    /// The function's own STS endpoint, from the SDK configuration it was built with.
    pub fn of_config(config: &aws_types::SdkConfig) -> Self {
        let region = config.region().map(ToString::to_string).unwrap_or_default();
        Self::new(config.endpoint_url(), &region)
    }

    /// Checks `proof` is a signed STS request bound to `digest`, sends it to STS and
    /// returns who signed it. A proof STS refuses, or one not bound to this decision, is
    /// `ApprovalMissing` (403).
    pub async fn verify(&self, proof: &IdentityProof, digest: &str) -> Result<CallerIdentity> {
        let headers = checked_headers(proof, digest)?;
        let mut request = http::Request::builder().method("POST").uri(&self.url);
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request
            .body(Full::new(bytes::Bytes::from_static(STS_BODY.as_bytes())))
            .map_err(|e| refused(format!("its headers do not make a request: {e}")))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| Error::internal(format!("no TLS root certificates: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let response = tokio::time::timeout(STS_TIMEOUT, client.request(request))
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Retryable,
                    format!(
                        "STS at {} did not answer within {} s",
                        self.url,
                        STS_TIMEOUT.as_secs()
                    ),
                )
            })?
            .map_err(|e| {
                Error::new(
                    ErrorKind::Retryable,
                    format!("sending the identity proof to STS at {}: {e}", self.url),
                )
            })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::new(ErrorKind::Retryable, format!("reading STS's answer: {e}")))?
            .to_bytes();
        let body = String::from_utf8_lossy(&body);
        if !status.is_success() {
            let code = xml_text(&body, "Code").unwrap_or_else(|| status.to_string());
            let message = xml_text(&body, "Message").unwrap_or_default();
            return Err(refused(format!(
                "STS at {} refused it ({code}: {message}); sign it with `drpilot approve` for this endpoint within 15 minutes",
                self.url
            )));
        }
        match (
            xml_text(&body, "Arn"),
            xml_text(&body, "UserId"),
            xml_text(&body, "Account"),
        ) {
            (Some(arn), Some(user_id), Some(account)) => Ok(CallerIdentity {
                arn,
                user_id,
                account,
            }),
            _ => Err(Error::new(
                ErrorKind::ServiceError,
                format!("STS at {} answered GetCallerIdentity without Arn, UserId and Account: {body:.300}", self.url),
            )),
        }
    }
}

fn refused(why: String) -> Error {
    Error::new(
        ErrorKind::ApprovalMissing,
        format!("identity: the proof of identity is not accepted: {why}"),
    )
}

/// The proof's headers, lower-cased, after checking they are a SigV4 signature for STS
/// that signs the host and the binding to `digest`.
fn checked_headers(proof: &IdentityProof, digest: &str) -> Result<BTreeMap<String, String>> {
    let mut headers = BTreeMap::new();
    for (name, value) in &proof.headers {
        let name = name.to_ascii_lowercase();
        if !ACCEPTED_HEADERS.contains(&name.as_str()) {
            return Err(refused(format!(
                "header {name:?} is not one a proof carries"
            )));
        }
        headers.insert(name, value.clone());
    }
    let header = |name: &str| headers.get(name).map(String::as_str);
    if header(DECISION_HEADER) != Some(digest) {
        return Err(refused(format!(
            "it is not bound to this decision ({DECISION_HEADER} must be the decision's digest {digest})"
        )));
    }
    if header("x-amz-date").is_none() {
        return Err(refused("it has no x-amz-date".into()));
    }
    let authorization =
        header("authorization").ok_or_else(|| refused("it has no authorization header".into()))?;
    let fields = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| refused("it is not a SigV4 (AWS4-HMAC-SHA256) signature".into()))?;
    let field = |name: &str| {
        fields
            .split(',')
            .map(str::trim)
            .find_map(|f| f.strip_prefix(name))
    };
    let scope_service = field("Credential=").and_then(|c| c.split('/').nth(3));
    if scope_service != Some("sts") {
        return Err(refused(format!(
            "it is signed for service {scope_service:?}, not sts"
        )));
    }
    let signed = field("SignedHeaders=").unwrap_or_default();
    for needed in ["host", DECISION_HEADER] {
        if !signed.split(';').any(|h| h == needed) {
            return Err(refused(format!("its signature does not cover {needed}")));
        }
    }
    Ok(headers)
}

/// The text of the first `<tag>…</tag>` in `xml`, entities decoded (STS's answers are
/// small and flat; a parser would add a dependency for three fields).
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(
        xml[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&")
            .trim()
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> DecisionRequest {
        DecisionRequest {
            execution_arn: "arn:aws:states:us-east-1:1:execution:m:r.1".into(),
            decision: Decision::Approve,
            approver: Some("alice".into()),
            ticket: Some("CHG-1".into()),
            comment: None,
            reason: None,
            identity: None,
        }
    }

    fn proof(digest: &str, signed: &str) -> IdentityProof {
        IdentityProof {
            headers: BTreeMap::from([
                ("Authorization".into(), format!("AWS4-HMAC-SHA256 Credential=AKID/20261205/us-east-1/sts/aws4_request, SignedHeaders={signed}, Signature=00")),
                ("X-Amz-Date".into(), "20261205T100000Z".into()),
                (DECISION_HEADER.into(), digest.into()),
            ]),
        }
    }

    #[test]
    fn the_digest_covers_every_decided_field_but_not_the_proof() {
        let base = request();
        let mut with_proof = base.clone();
        with_proof.identity = Some(proof("x", "host"));
        assert_eq!(base.digest(), with_proof.digest());
        let mut other = base.clone();
        other.execution_arn.push('2');
        assert_ne!(base.digest(), other.digest());
        let mut other = base.clone();
        other.ticket = Some("CHG-2".into());
        assert_ne!(base.digest(), other.digest());
        let mut other = base.clone();
        other.comment = Some("fine".into());
        assert_ne!(base.digest(), other.digest());
    }

    #[test]
    fn proofs_must_be_sts_signatures_bound_to_the_decision() {
        let digest = request().digest();
        let signed = format!("content-type;host;x-amz-date;{DECISION_HEADER}");
        assert!(checked_headers(&proof(&digest, &signed), &digest).is_ok());
        let message = |p: IdentityProof| checked_headers(&p, &digest).unwrap_err().message;
        assert!(message(proof("00", &signed)).contains("not bound"));
        assert!(message(proof(&digest, "host;x-amz-date")).contains(DECISION_HEADER));
        let mut lambda = proof(&digest, &signed);
        lambda.headers.insert(
            "Authorization".into(),
            format!("AWS4-HMAC-SHA256 Credential=AKID/20261205/us-east-1/lambda/aws4_request, SignedHeaders={signed}, Signature=00"),
        );
        assert!(message(lambda).contains("not sts"));
        let mut extra = proof(&digest, &signed);
        extra
            .headers
            .insert("X-Forwarded-Host".into(), "evil".into());
        assert!(message(extra).contains("x-forwarded-host"));
        let mut unsigned = proof(&digest, &signed);
        unsigned.headers.remove("Authorization");
        assert!(message(unsigned).contains("authorization"));
    }

    #[test]
    fn people_are_roles_unless_sessions_are_trusted() {
        let alice = "arn:aws:sts::1:assumed-role/Approvers/alice";
        let bob = "arn:aws:sts::1:assumed-role/Approvers/bob";
        assert_eq!(
            person(alice, PersonRule::Role),
            person(bob, PersonRule::Role)
        );
        assert_eq!(
            person(alice, PersonRule::Role),
            "arn:aws:sts::1:assumed-role/Approvers"
        );
        assert_ne!(
            person(alice, PersonRule::Session),
            person(bob, PersonRule::Session)
        );
        let user = "arn:aws:iam::1:user/carol";
        assert_eq!(person(user, PersonRule::Role), user);
    }

    #[test]
    fn sts_answers_are_read() {
        let xml = "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>arn:aws:iam::1:user/a&amp;b</Arn><UserId>AIDA</UserId><Account>1</Account></GetCallerIdentityResult></GetCallerIdentityResponse>";
        assert_eq!(
            xml_text(xml, "Arn").as_deref(),
            Some("arn:aws:iam::1:user/a&b")
        );
        assert_eq!(xml_text(xml, "Account").as_deref(), Some("1"));
        assert_eq!(xml_text(xml, "Missing"), None);
    }

    #[test]
    fn the_endpoint_is_the_functions_own() {
        assert_eq!(
            StsEndpoint::new(None, "eu-west-1").url,
            "https://sts.eu-west-1.amazonaws.com/"
        );
        assert_eq!(
            StsEndpoint::new(Some("http://127.0.0.1:5000"), "us-east-1").url,
            "http://127.0.0.1:5000/"
        );
    }
}
