//! `http`: one request per poll; verified when the answer has the expected status (and the
//! body the expected text), polled again until then or the component's timeout.
//!
//! The client is hyper's, over the rustls stack the AWS SDK already links (system roots):
//! no second HTTP or TLS stack in the binary. Redirects are not followed: a check that
//! wants one says so with its `expected_status`.

use std::time::Duration;

use drpilot_shared::component::{ComponentReceipt, HttpCheck};
use drpilot_shared::{Error, Result};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use super::{tail, Cx, Kind, Progress};

/// The most of a body read for `body_contains` (a health page, not a download).
const BODY_LIMIT: usize = 256 * 1024;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// An HTTP(S) client for probes, built once.
#[derive(Clone)]
pub struct HttpProbe {
    client: Option<Client<Https, Full<bytes::Bytes>>>,
}

impl HttpProbe {
    pub fn new() -> Self {
        // The AWS SDK's own provider (aws-lc-rs): one crypto stack in the binary. Without any
        // system root certificate the probe cannot be built, and every request says why.
        let client = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
            .ok()
            .map(|b| {
                let https = b.https_or_http().enable_http1().enable_http2().build();
                Client::builder(TokioExecutor::new()).build(https)
            });
        Self { client }
    }

    /// One request: the status and up to [`BODY_LIMIT`] bytes of the body, or why none came.
    pub async fn fetch(&self, check: &HttpCheck) -> std::result::Result<(u16, String), String> {
        let client = self
            .client
            .as_ref()
            .ok_or("no TLS root certificates on this system")?;
        let request = http::Request::builder()
            .method(check.method.as_str())
            .uri(&check.url)
            .header("user-agent", "drpilot-component-check")
            .body(Full::new(bytes::Bytes::new()))
            .map_err(|e| format!("bad request: {e}"))?;
        let timeout = Duration::from_secs(check.request_timeout_seconds);
        let exchange = async {
            let response = client
                .request(request)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let status = response.status().as_u16();
            let mut body = Vec::new();
            let mut stream = response.into_body();
            while let Some(frame) = stream.frame().await {
                let frame = frame.map_err(|e| format!("reading the body: {e}"))?;
                if let Some(data) = frame.data_ref() {
                    body.extend_from_slice(data);
                    if body.len() >= BODY_LIMIT {
                        break;
                    }
                }
            }
            Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {} s", check.request_timeout_seconds))?
    }
}

impl Default for HttpProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl Kind for HttpCheck {
    async fn check(&self, _cx: &Cx<'_>) -> Result<String> {
        self.url
            .parse::<http::Uri>()
            .map_err(|e| Error::input(format!("url: {e}")))?;
        Ok(format!(
            "would {} {} expecting {}{}",
            self.method,
            self.url,
            self.expected_status,
            self.body_contains
                .as_ref()
                .map(|b| format!(" and a body containing {b:?}"))
                .unwrap_or_default()
        ))
    }

    async fn start(&self, cx: &Cx<'_>, receipt: &mut ComponentReceipt) -> Result<Progress> {
        self.poll(cx, receipt).await
    }

    async fn poll(&self, cx: &Cx<'_>, receipt: &mut ComponentReceipt) -> Result<Progress> {
        let answer = cx.clients.http.fetch(self).await;
        let attempts = receipt.details["requests"].as_u64().unwrap_or(0) + 1;
        receipt.details = json!({"url": self.url, "method": self.method, "requests": attempts});
        let why = match answer {
            Err(why) => {
                receipt.details["error"] = json!(why);
                why
            }
            Ok((status, body)) => {
                receipt.details["status"] = json!(status);
                receipt.details["body_tail"] = json!(tail(&body, 500));
                let body_ok = self
                    .body_contains
                    .as_ref()
                    .is_none_or(|needle| body.contains(needle.as_str()));
                if status == self.expected_status && body_ok {
                    return Ok(Progress::Verified {
                        restored_point: None,
                    });
                }
                if status != self.expected_status {
                    format!("answered {status}, expected {}", self.expected_status)
                } else {
                    format!(
                        "answered {status} without {:?} in the body",
                        self.body_contains.as_deref().unwrap_or_default()
                    )
                }
            }
        };
        Ok(Progress::Waiting(format!("{} {}", self.url, why)))
    }
}
