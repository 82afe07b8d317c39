//! `drpilot approve` and `drpilot deny`: answer a waiting run's approval through the
//! approve function, which records who called (the IAM principal of the signed request),
//! enforces the profile's two-person rule and seals the decision for promote to verify.
//!
//! Every request carries the caller's proof of identity: an STS `GetCallerIdentity`
//! request signed with the caller's credentials and bound to the decision
//! ([`drpilot_shared::identity`]), which the function sends to STS itself. On AWS the
//! request goes to the function's URL (`AWS_IAM` auth), signed with SigV4 too; on the
//! local stack, which has no Function URLs, the same request event is handed to the
//! function through Lambda Invoke, and the emulator's STS answers the proof.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SigningInstructions, SigningSettings,
};
use aws_sigv4::sign::v4;
use drpilot_shared::approval::Decision;
use drpilot_shared::identity::{
    DecisionRequest, IdentityProof, StsEndpoint, DECISION_HEADER, STS_BODY, STS_CONTENT_TYPE,
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::{CliError, Ctx};

/// The approve function the CLI calls when none is named: the template's name for the
/// default stack. `--approve-function` takes a name, an ARN or the URL itself.
pub const DEFAULT_APPROVE_FUNCTION: &str = "drpilot-approve";
/// The approve function's name on the local stack (the binary `cargo lambda watch` serves).
pub const LOCAL_APPROVE_FUNCTION: &str = "approve";

/// How long the approve function may take to answer.
const TIMEOUT: Duration = Duration::from_secs(60);

/// `drpilot approve`: the approve function answers the approval with approver, ticket,
/// the caller's principal and its seal; promote verifies the seal and writes them into
/// the audit record. Returns the decision record.
pub async fn approve(
    ctx: &Ctx,
    run_id: &str,
    approver: &str,
    ticket: &str,
    comment: Option<&str>,
) -> Result<Value, CliError> {
    if approver.trim().is_empty() || ticket.trim().is_empty() {
        return Err(CliError::Usage(
            "--approver and --ticket must not be empty".into(),
        ));
    }
    let (arn, _) = ctx.any_execution_arn(run_id).await?;
    let request = DecisionRequest {
        execution_arn: arn,
        decision: Decision::Approve,
        approver: Some(approver.trim().to_owned()),
        ticket: Some(ticket.trim().to_owned()),
        comment: comment.map(str::to_owned),
        reason: None,
        identity: None,
    };
    let record = decide(ctx, request).await?;
    ctx.out.say(format!(
        "approved run {run_id} as {approver} (ticket {ticket}; {})",
        principal_words(&record)
    ));
    Ok(record["approval"].clone())
}

/// `drpilot deny`: the approve function fails the approval task; the run skips promote
/// and tears down.
pub async fn deny(ctx: &Ctx, run_id: &str, reason: &str) -> Result<(), CliError> {
    if reason.trim().is_empty() {
        return Err(CliError::Usage("--reason must not be empty".into()));
    }
    let (arn, _) = ctx.any_execution_arn(run_id).await?;
    let request = DecisionRequest {
        execution_arn: arn,
        decision: Decision::Deny,
        approver: None,
        ticket: None,
        comment: None,
        reason: Some(reason.trim().to_owned()),
        identity: None,
    };
    let record = decide(ctx, request).await?;
    ctx.out.say(format!(
        "denied run {run_id}: {reason} ({})",
        principal_words(&record)
    ));
    Ok(())
}

fn principal_words(record: &Value) -> String {
    format!(
        "principal {}, proven by STS at {}, sealed",
        record["principal"].as_str().unwrap_or("unknown"),
        record["identity_verified_by"].as_str().unwrap_or("unknown")
    )
}

/// Sends `request`, with the caller's proof of identity, to the approve function and
/// returns its decision record, or its refusal as an error naming why.
async fn decide(ctx: &Ctx, mut request: DecisionRequest) -> Result<Value, CliError> {
    request.identity = Some(prove_identity(&ctx.aws.config, &request.digest()).await?);
    let body = serde_json::to_string(&request)
        .map_err(|e| CliError::Encoding(format!("encoding the decision: {e}")))?;
    let (status, answer) = if ctx.emulator {
        invoke(ctx, &body).await?
    } else {
        post_signed(ctx, &body).await?
    };
    let answer: Value = serde_json::from_str(&answer).map_err(|e| {
        CliError::Function(format!(
            "the approve function answered HTTP {status} with a body that is not JSON ({e}): {answer:.300}"
        ))
    })?;
    if status == 200 {
        return Ok(answer);
    }
    let message = answer["message"].as_str().unwrap_or("no message");
    let error = answer["error"].as_str().unwrap_or("an error");
    Err(match status {
        400 | 403 | 409 => {
            CliError::Usage(format!("the approve function refused ({error}): {message}"))
        }
        _ => CliError::Function(format!(
            "the approve function failed with HTTP {status} ({error}): {message}"
        )),
    })
}

/// The caller's proof of identity for what `digest` names (a decision's
/// [`DecisionRequest::digest`], a start's [`drpilot_shared::identity::start_digest`]): an
/// STS `GetCallerIdentity` POST for the STS endpoint of `config` (the one the function
/// that checks it asks: its region's, or the emulator), signed with `config`'s
/// credentials, its [`DECISION_HEADER`] the digest. Only the headers travel; the function
/// sends the request itself.
pub async fn prove_identity(
    config: &aws_types::SdkConfig,
    digest: &str,
) -> Result<IdentityProof, CliError> {
    let sts = StsEndpoint::of_config(config);
    let headers = [
        ("content-type", STS_CONTENT_TYPE),
        (DECISION_HEADER, digest),
    ];
    let instructions = sign_post(
        config,
        "sts",
        &sts.url,
        &headers,
        STS_BODY.as_bytes(),
        "the proof of identity",
    )
    .await?;
    let mut signed = http::Request::builder()
        .method("POST")
        .uri(&sts.url)
        .body(())
        .map_err(|e| CliError::Signing(format!("the proof of identity: {e}")))?;
    for (name, value) in headers {
        signed.headers_mut().insert(
            name,
            http::HeaderValue::from_str(value)
                .map_err(|e| CliError::Signing(format!("the proof of identity: {e}")))?,
        );
    }
    instructions.apply_to_request_http1x(&mut signed);
    let headers = signed
        .headers()
        .iter()
        .filter(|(name, _)| *name != http::header::HOST)
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    Ok(IdentityProof { headers })
}

/// SigV4 for a POST of `body` with `headers` to `url` (service `service`), with the
/// configuration's credentials and region: the headers to add to the request.
async fn sign_post(
    config: &aws_types::SdkConfig,
    service: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    what: &str,
) -> Result<SigningInstructions, CliError> {
    let signing = |e: &dyn std::fmt::Display| CliError::Signing(format!("signing {what}: {e}"));
    let region = config.region().ok_or_else(|| {
        CliError::Usage("no AWS region: set AWS_REGION or a profile's region".into())
    })?;
    let credentials = config
        .credentials_provider()
        .ok_or_else(|| CliError::Usage("no AWS credentials provider".into()))?
        .provide_credentials()
        .await
        .map_err(|e| CliError::Usage(format!("no AWS credentials: {e}")))?;
    let identity = credentials.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region.as_ref())
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| signing(&e))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| signing(&e))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| signing(&e))?
        .into_parts();
    Ok(instructions)
}

/// The local stack: the Function URL's request event through Lambda Invoke.
async fn invoke(ctx: &Ctx, body: &str) -> Result<(u16, String), CliError> {
    let function = ctx
        .approve_function
        .clone()
        .unwrap_or_else(|| LOCAL_APPROVE_FUNCTION.to_owned());
    let event = json!({
        "version": "2.0",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": "POST", "path": "/"}, "timeEpoch": 0},
        "body": body,
        "isBase64Encoded": false,
    });
    let payload = ctx
        .invoke_function(&function, "the approve function", &event)
        .await?;
    let status = payload["statusCode"].as_u64().unwrap_or(0) as u16;
    Ok((status, payload["body"].as_str().unwrap_or("{}").to_owned()))
}

/// AWS: a SigV4-signed POST to the function's URL (service `lambda`).
async fn post_signed(ctx: &Ctx, body: &str) -> Result<(u16, String), CliError> {
    let url = function_url(ctx).await?;
    let content_type = ("content-type", "application/json");
    let instructions = sign_post(
        &ctx.aws.config,
        "lambda",
        &url,
        &[content_type],
        body.as_bytes(),
        "the approval request",
    )
    .await?;
    let mut request = http::Request::builder()
        .method("POST")
        .uri(&url)
        .header(content_type.0, content_type.1)
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .map_err(|e| CliError::Signing(format!("the approval request: {e}")))?;
    instructions.apply_to_request_http1x(&mut request);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
        .map_err(|e| CliError::Http(format!("no TLS root certificates: {e}")))?
        .https_only()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build(https);
    let response = tokio::time::timeout(TIMEOUT, client.request(request))
        .await
        .map_err(|_| {
            CliError::Http(format!(
                "{url} did not answer within {} s",
                TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| CliError::Http(format!("POST {url}: {e}")))?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| CliError::Http(format!("reading the answer of {url}: {e}")))?
        .to_bytes();
    if status == 403 && !bytes.starts_with(b"{\"error\"") {
        // Lambda's own refusal, before the function ran: the caller may not invoke it.
        return Err(CliError::Usage(format!(
            "{url} refused the signed request (HTTP 403): the caller needs lambda:InvokeFunctionUrl on the approve function: {}",
            String::from_utf8_lossy(&bytes)
        )));
    }
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// The approve function's URL: as given, or from its Function URL configuration.
async fn function_url(ctx: &Ctx) -> Result<String, CliError> {
    let function = ctx
        .approve_function
        .clone()
        .unwrap_or_else(|| DEFAULT_APPROVE_FUNCTION.to_owned());
    if function.starts_with("https://") {
        return Ok(function);
    }
    let config = ctx
        .aws
        .lambda()
        .get_function_url_config()
        .function_name(&function)
        .send()
        .await
        .map_err(|e| CliError::aws(&format!("GetFunctionUrlConfig {function}"), e))?;
    Ok(config.function_url().to_owned())
}
