//! `ssm_command`: the team's restore test (e.g. `restore-test.sh postgres`) through SSM Run
//! Command on instances by id or by tag, polled until every invocation ends; each
//! invocation's status, exit code and output tail are recorded. Verified when every
//! invocation succeeded.
//!
//! A start retried after SendCommand went out but before its receipt was written sends
//! the command again: the team's script must be safe to run twice.

use aws_sdk_ssm::types::{CommandInvocationStatus, Target};
use drpilot_shared::component::{ComponentReceipt, SsmCommand};
use drpilot_shared::{Error, Result};
use serde_json::{json, Value};

use super::{tail, Cx, Kind, Progress};

/// How much of each invocation's output the receipt keeps.
const OUTPUT_TAIL: usize = 2000;

impl Kind for SsmCommand {
    async fn check(&self, _cx: &Cx<'_>) -> Result<String> {
        let on = if self.instance_ids.is_empty() {
            format!("targets {:?}", self.targets)
        } else {
            format!("instances {}", self.instance_ids.join(", "))
        };
        Ok(format!(
            "would run {} {:?} on {on}",
            self.document, self.parameters
        ))
    }

    async fn start(&self, cx: &Cx<'_>, receipt: &mut ComponentReceipt) -> Result<Progress> {
        let targets: Vec<Target> = self
            .targets
            .iter()
            .map(|(key, values)| {
                Target::builder()
                    .key(key)
                    .set_values(Some(values.clone()))
                    .build()
            })
            .collect();
        let sent = cx
            .clients
            .ssm
            .send_command()
            .document_name(&self.document)
            .set_parameters(Some(self.parameters.clone().into_iter().collect()))
            .set_instance_ids((!self.instance_ids.is_empty()).then(|| self.instance_ids.clone()))
            .set_targets((!targets.is_empty()).then_some(targets))
            .comment(
                format!("drpilot run {} component {}", cx.run.run_id, cx.name())
                    .chars()
                    .take(100)
                    .collect::<String>(),
            )
            .timeout_seconds(
                i32::try_from(cx.spec.timeout_seconds.min(2_592_000)).unwrap_or(i32::MAX),
            )
            .send()
            .await
            .map_err(|e| Error::from_sdk(&format!("SendCommand {}", self.document), e))?;
        let command_id = sent
            .command()
            .and_then(|c| c.command_id())
            .ok_or_else(|| Error::internal("SendCommand answered without a command id"))?
            .to_owned();
        receipt.state = json!({"command_id": command_id});
        receipt.details =
            json!({"document": self.document, "command_id": command_id, "invocations": []});
        Ok(Progress::Waiting(format!("command {command_id} sent")))
    }

    async fn poll(&self, cx: &Cx<'_>, receipt: &mut ComponentReceipt) -> Result<Progress> {
        let command_id = receipt.state["command_id"]
            .as_str()
            .ok_or_else(|| Error::internal("ssm_command polled without a command id"))?
            .to_owned();
        let invocations = if self.instance_ids.is_empty() {
            self.by_targets(cx, &command_id).await?
        } else {
            let mut each = Vec::new();
            for instance in &self.instance_ids {
                each.push(self.on_instance(cx, &command_id, instance).await?);
            }
            each
        };
        receipt.details["invocations"] =
            Value::Array(invocations.iter().map(Invocation::record).collect());
        if invocations.is_empty() {
            return Ok(Progress::Waiting(format!(
                "command {command_id}: no invocation yet"
            )));
        }
        if let Some(failed) = invocations.iter().find(|i| i.failed()) {
            return Ok(Progress::Failed(Error::integrity(format!(
                "{} on {}: {} (exit {}): {}",
                self.document,
                failed.instance,
                failed.status,
                failed.code,
                tail(
                    if failed.error.is_empty() {
                        &failed.output
                    } else {
                        &failed.error
                    },
                    300
                )
            ))));
        }
        if invocations.iter().all(|i| i.status == "Success") {
            return Ok(Progress::Verified {
                restored_point: None,
            });
        }
        let pending: Vec<&str> = invocations
            .iter()
            .filter(|i| i.status != "Success")
            .map(|i| i.instance.as_str())
            .collect();
        Ok(Progress::Waiting(format!(
            "command {command_id} still running on {}",
            pending.join(", ")
        )))
    }
}

/// One instance's run of the command.
struct Invocation {
    instance: String,
    status: String,
    code: i32,
    output: String,
    error: String,
}

impl Invocation {
    fn failed(&self) -> bool {
        matches!(
            self.status.as_str(),
            "Cancelled"
                | "Cancelling"
                | "TimedOut"
                | "Failed"
                | "Undeliverable"
                | "Terminated"
                | "DeliveryTimedOut"
                | "ExecutionTimedOut"
        )
    }

    fn record(&self) -> Value {
        json!({
            "instance_id": self.instance,
            "status": self.status,
            "response_code": self.code,
            "output_tail": tail(&self.output, OUTPUT_TAIL),
            "error_tail": tail(&self.error, OUTPUT_TAIL),
        })
    }
}

/// What the kind's steps share.
trait Invocations {
    async fn on_instance(
        &self,
        cx: &Cx<'_>,
        command_id: &str,
        instance: &str,
    ) -> Result<Invocation>;
    async fn by_targets(&self, cx: &Cx<'_>, command_id: &str) -> Result<Vec<Invocation>>;
}

impl Invocations for SsmCommand {
    async fn on_instance(
        &self,
        cx: &Cx<'_>,
        command_id: &str,
        instance: &str,
    ) -> Result<Invocation> {
        let out = cx
            .clients
            .ssm
            .get_command_invocation()
            .command_id(command_id)
            .instance_id(instance)
            .send()
            .await;
        match out {
            Ok(out) => Ok(Invocation {
                instance: instance.to_owned(),
                status: out.status().map_or("Pending", |s| s.as_str()).to_owned(),
                code: out.response_code(),
                output: out.standard_output_content().unwrap_or_default().to_owned(),
                error: out.standard_error_content().unwrap_or_default().to_owned(),
            }),
            // Right after SendCommand the invocation may not be registered yet.
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_invocation_does_not_exist()) =>
            {
                Ok(Invocation {
                    instance: instance.to_owned(),
                    status: "Pending".into(),
                    code: -1,
                    output: String::new(),
                    error: String::new(),
                })
            }
            Err(err) => Err(Error::from_sdk(
                &format!("GetCommandInvocation {command_id} {instance}"),
                err,
            )),
        }
    }

    /// The invocations on every instance the targets resolved to.
    async fn by_targets(&self, cx: &Cx<'_>, command_id: &str) -> Result<Vec<Invocation>> {
        let mut all = Vec::new();
        let mut pages = cx
            .clients
            .ssm
            .list_command_invocations()
            .command_id(command_id)
            .details(true)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| Error::from_sdk(&format!("ListCommandInvocations {command_id}"), e))?;
            for invocation in page.command_invocations() {
                let plugin = invocation.command_plugins().first();
                all.push(Invocation {
                    instance: invocation.instance_id().unwrap_or_default().to_owned(),
                    status: invocation
                        .status()
                        .map_or(CommandInvocationStatus::Pending.as_str(), |s| s.as_str())
                        .to_owned(),
                    code: plugin.map_or(-1, |p| p.response_code()),
                    output: plugin
                        .and_then(|p| p.output())
                        .unwrap_or_default()
                        .to_owned(),
                    error: String::new(),
                });
            }
        }
        Ok(all)
    }
}
