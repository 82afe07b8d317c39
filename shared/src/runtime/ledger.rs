//! The call ledger: every AWS call a function makes, written as one JSON line to the file
//! `DRPILOT_CALL_LEDGER` names, so the permission check (`infra/permissions.py`, run by
//! `make test`) can evaluate each one against the role the template gives that function.
//!
//! The local emulator enforces no IAM, so a test passing there says nothing about
//! whether the deployed role allows the call. The ledger closes that gap: an SDK
//! interceptor, attached only when the variable is set, records what IAM evaluates —
//! the service and operation, the resource, the request facts that condition keys are
//! made of (`s3:prefix`, `cloudwatch:namespace`, ...) — and the outcome, which decides
//! the permissions the emulator forgives (a read that found no key needs
//! `s3:ListBucket`, an SSE-KMS object needs its key). Mapping operations to IAM actions
//! is the checker's job; the ledger states facts about the request.
//!
//! Records are appended with one `write` on a file opened in append mode, so the test
//! process and every function process of a test run can share one ledger.
//!
//! The S3 resource is read from the request path, which assumes path-style addressing:
//! what [`crate::AwsClients`] uses against any custom endpoint, and the ledger is only
//! ever switched on against the emulator.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, Metadata};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

/// The environment variable naming the ledger file.
pub const LEDGER_ENV: &str = "DRPILOT_CALL_LEDGER";

/// One AWS call, as the permission check reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// The workspace binary (phase function) that made the call.
    pub function: String,
    /// The SDK's service name, lower-case (`s3`, `ssm`, `sts`, `monitoring`, ...).
    pub service: String,
    /// The SDK operation, e.g. `ListObjectsV2`.
    pub operation: String,
    pub region: String,
    /// `arn:aws:s3:::bucket[/key]` for S3; the parameter's ARN without the account
    /// (`arn:aws:ssm:<region>::parameter/<name>`, the checker fills it in) for SSM;
    /// `*` where the action has no resource.
    pub resource: String,
    /// DeleteObjects: the keys the request deletes (`resource` is then the bucket).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// CopyObject and UploadPartCopy: the source object's ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_source: Option<String>,
    /// The request sets object tags (`x-amz-tagging`).
    #[serde(default)]
    pub tagging: bool,
    /// CopyObject's `x-amz-tagging-directive`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tagging_directive: Option<String>,
    /// The request values IAM condition keys are made of, named as the keys are.
    #[serde(default)]
    pub context: BTreeMap<String, String>,
    /// The SSE-KMS key of the object written or read, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<String>,
    /// The request's own parameters for services whose IAM resources and condition keys
    /// come from them (RDS, Lambda, AWS Backup, SSM Run Command): the form or top-level
    /// JSON fields (lists joined with `,`, objects as JSON) and, for REST APIs, `path`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// The final attempt's HTTP status (0: no response).
    pub status: u16,
    /// The error code of a failed call (from the response body, or the status for a
    /// bodiless answer such as HeadObject's 404).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Records every call of the client it is attached to, labelled with `function`.
#[derive(Clone, Debug)]
pub struct CallLedger {
    function: &'static str,
    path: PathBuf,
}

impl CallLedger {
    /// The ledger `DRPILOT_CALL_LEDGER` names, for calls made by `function`; `None`
    /// (no recording at all) when the variable is unset or empty.
    pub fn from_env(function: &'static str) -> Option<Self> {
        let path = std::env::var_os(LEDGER_ENV).filter(|p| !p.is_empty())?;
        Some(Self {
            function,
            path: path.into(),
        })
    }

    fn append(&self, record: &CallRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?
            .write_all(&line)
    }
}

/// What the request looked like, kept from before it was sent until the call ends.
#[derive(Clone, Debug)]
struct Sent(CallRecord);

impl Storable for Sent {
    type Storer = StoreReplace<Self>;
}

impl Intercept for CallLedger {
    fn name(&self) -> &'static str {
        "drpilot::CallLedger"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let (service, operation) = cfg
            .load::<Metadata>()
            .map(|m| (m.service().to_lowercase(), m.name().to_owned()))
            .unwrap_or_default();
        let region = cfg
            .load::<aws_types::region::Region>()
            .map(ToString::to_string)
            .unwrap_or_default();
        let record = describe(
            self.function,
            &service,
            &operation,
            &region,
            context.request(),
        );
        cfg.interceptor_state().store_put(Sent(record));
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // A call that failed before it was sent (a builder error) reached no service.
        let Some(Sent(mut record)) = cfg.load::<Sent>().cloned() else {
            return Ok(());
        };
        if let Some(response) = context.response() {
            record.status = response.status().as_u16();
            let headers = response.headers();
            if record.kms_key.is_none()
                && headers.get("x-amz-server-side-encryption") == Some("aws:kms")
            {
                record.kms_key = headers
                    .get("x-amz-server-side-encryption-aws-kms-key-id")
                    .map(str::to_owned);
            }
            if !response.status().is_success() {
                record.error = response
                    .body()
                    .bytes()
                    .and_then(error_code)
                    .or_else(|| Some(record.status.to_string()));
            }
        } else if context.output_or_error().is_some_and(|r| r.is_err()) {
            record.error = Some("NoResponse".into());
        }
        // The ledger serves the permission check; a write failure must not fail the call.
        if let Err(err) = self.append(&record) {
            tracing::warn!(ledger = %self.path.display(), error = %err, "could not append to the call ledger");
        }
        Ok(())
    }
}

/// The request facts IAM evaluates, before the outcome is known.
fn describe(
    function: &str,
    service: &str,
    operation: &str,
    region: &str,
    request: &HttpRequest,
) -> CallRecord {
    let mut record = CallRecord {
        function: function.to_owned(),
        service: service.to_owned(),
        operation: operation.to_owned(),
        region: region.to_owned(),
        resource: "*".to_owned(),
        ..CallRecord::default()
    };
    let (path, query) = path_and_query(request.uri());
    let query: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let body = request
        .body()
        .bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned());
    match service {
        "s3" => describe_s3(&mut record, path, &query, request, body.as_deref()),
        "rds" | "sns" => {
            // awsQuery: every form field but the action and version.
            if let Some(b) = body.as_deref() {
                for (name, value) in form_urlencoded::parse(b.as_bytes()) {
                    if name != "Action" && name != "Version" {
                        record.params.insert(name.into_owned(), value.into_owned());
                    }
                }
            }
        }
        "kms" | "sfn" => {
            // awsJson: the request body names the key, execution or state machine.
            record.params.extend(json_params(body.as_deref()));
        }
        "lambda" | "backup" | "scheduler" => {
            record.params.insert(
                "path".to_owned(),
                percent_decode_str(path).decode_utf8_lossy().into_owned(),
            );
            record.params.extend(json_params(body.as_deref()));
            for (name, value) in &query {
                record.params.insert(format!("query.{name}"), value.clone());
            }
        }
        "ssm"
            if operation != "GetParameter"
                && operation != "GetParameters"
                && operation != "GetParametersByPath"
                && operation != "PutParameter" =>
        {
            record.params.extend(json_params(body.as_deref()));
        }
        "ssm" => {
            let name = body
                .as_deref()
                .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
                .and_then(|v| v.get("Name").and_then(|n| n.as_str()).map(str::to_owned));
            if let Some(name) = name {
                record.resource = format!(
                    "arn:aws:ssm:{region}::parameter/{}",
                    name.trim_start_matches('/')
                );
            }
        }
        "monitoring" | "cloudwatch" => {
            // awsQuery: a form-encoded body. Only PutMetricData names a namespace IAM
            // conditions on (`cloudwatch:namespace`).
            let namespace = body.as_deref().and_then(|b| {
                form_urlencoded::parse(b.as_bytes())
                    .find(|(n, _)| n == "Namespace")
                    .map(|(_, v)| v.into_owned())
            });
            if let Some(namespace) = namespace {
                record
                    .context
                    .insert("cloudwatch:namespace".to_owned(), namespace);
            }
        }
        _ => {}
    }
    record
}

/// An S3 request's facts: the object or bucket, the condition keys IAM evaluates (the
/// listing's prefix, a version, Object Lock headers), the copy's source, tags and KMS
/// key, and a DeleteObjects request's keys.
fn describe_s3(
    record: &mut CallRecord,
    path: &str,
    query: &[(String, String)],
    request: &HttpRequest,
    body: Option<&str>,
) {
    record.resource = s3_arn(path);
    for (name, key) in [
        ("prefix", "s3:prefix"),
        ("delimiter", "s3:delimiter"),
        ("max-keys", "s3:max-keys"),
    ] {
        if let Some((_, value)) = query.iter().find(|(n, _)| n == name) {
            record.context.insert(key.to_owned(), value.clone());
        }
    }
    let headers = request.headers();
    record.copy_source = headers.get("x-amz-copy-source").map(|source| {
        // `bucket/key` (percent-encoded), optionally with a leading slash.
        s3_arn(&format!("/{}", source.trim_start_matches('/')))
    });
    record.tagging = headers.get("x-amz-tagging").is_some();
    record.tagging_directive = headers.get("x-amz-tagging-directive").map(str::to_owned);
    if headers.get("x-amz-server-side-encryption") == Some("aws:kms") {
        record.kms_key = headers
            .get("x-amz-server-side-encryption-aws-kms-key-id")
            .map(str::to_owned);
    }
    if let Some((_, version)) = query.iter().find(|(n, _)| n == "versionId") {
        record
            .context
            .insert("s3:versionid".to_owned(), version.clone());
    }
    for header in [
        "x-amz-object-lock-mode",
        "x-amz-object-lock-retain-until-date",
        "x-amz-object-lock-legal-hold",
    ] {
        if let Some(value) = headers.get(header) {
            record.context.insert(
                format!("s3:{}", header.trim_start_matches("x-amz-")),
                value.to_owned(),
            );
        }
    }
    if record.operation == "DeleteObjects" {
        record.keys = body.map(xml_keys).unwrap_or_default();
    }
}

/// The top-level fields of a JSON request body: strings as they are, lists of strings
/// joined with `,`, anything else as JSON text.
fn json_params(body: Option<&str>) -> BTreeMap<String, String> {
    let Some(serde_json::Value::Object(fields)) = body.and_then(|b| serde_json::from_str(b).ok())
    else {
        return BTreeMap::new();
    };
    fields
        .into_iter()
        .map(|(name, value)| {
            let text = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Array(items) if items.iter().all(|i| i.is_string()) => items
                    .iter()
                    .filter_map(|i| i.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            (name, text)
        })
        .collect()
}

/// The path and the query string of an absolute request URI.
fn path_and_query(uri: &str) -> (&str, &str) {
    let after_scheme = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let path_and_query = after_scheme
        .find('/')
        .map_or("/", |slash| &after_scheme[slash..]);
    path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""))
}

/// `/bucket/key?...` (path-style) as `arn:aws:s3:::bucket/key`, the key decoded.
fn s3_arn(path: &str) -> String {
    let path = path.trim_start_matches('/');
    let path = path.split('?').next().unwrap_or_default();
    let decoded = percent_decode_str(path).decode_utf8_lossy();
    match decoded.split_once('/') {
        // A bucket-level request (`/bucket/?list-type=2`) names the bucket.
        Some((bucket, "")) => format!("arn:aws:s3:::{bucket}"),
        _ => format!("arn:aws:s3:::{decoded}"),
    }
}

/// The `<Key>` values of a DeleteObjects request body.
fn xml_keys(body: &str) -> Vec<String> {
    body.split("<Key>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| unescape_xml(key)))
        .collect()
}

fn unescape_xml(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The error code of an AWS error body: `<Code>` (REST-XML, query) or `__type` (JSON).
fn error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    if let Some((_, rest)) = text.split_once("<Code>") {
        return rest.split_once("</Code>").map(|(code, _)| code.to_owned());
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let code = value.get("__type")?.as_str()?;
    Some(code.rsplit('#').next().unwrap_or(code).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_resources_come_from_the_path_decoded() {
        assert_eq!(
            s3_arn("/target-data/root/a%20b/%C3%A9.json"),
            "arn:aws:s3:::target-data/root/a b/é.json"
        );
        assert_eq!(s3_arn("/target-data/"), "arn:aws:s3:::target-data");
        assert_eq!(s3_arn("/target-data"), "arn:aws:s3:::target-data");
    }

    #[test]
    fn uris_split_into_path_and_query() {
        assert_eq!(
            path_and_query("http://127.0.0.1:4599/b/k%20x?list-type=2&prefix=a%2F"),
            ("/b/k%20x", "list-type=2&prefix=a%2F")
        );
        assert_eq!(path_and_query("https://s3.amazonaws.com"), ("/", ""));
    }

    #[test]
    fn delete_objects_keys_are_read_from_the_body() {
        let body = "<Delete><Object><Key>_staging/r/a&amp;b</Key></Object><Object><Key>_staging/r/c</Key></Object><Quiet>true</Quiet></Delete>";
        assert_eq!(xml_keys(body), ["_staging/r/a&b", "_staging/r/c"]);
    }

    #[test]
    fn error_codes_from_xml_and_json_bodies() {
        assert_eq!(
            error_code(b"<Error><Code>NoSuchKey</Code><Message>m</Message></Error>").as_deref(),
            Some("NoSuchKey")
        );
        assert_eq!(
            error_code(br#"{"__type":"com.amazonaws.ssm#ParameterNotFound","message":"x"}"#)
                .as_deref(),
            Some("ParameterNotFound")
        );
        assert_eq!(error_code(b""), None);
    }
}
