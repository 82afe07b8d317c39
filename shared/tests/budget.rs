//! The PUT budget against S3's throttling, which the local emulator never answers: an S3
//! client whose responses come from aws-smithy-mocks says `503 SlowDown` (S3's own XML
//! error) to the copy engine's requests, and the budget slows down and gets them through.
//! A fenced budget (a range's child after teardown ended its run) copies nothing.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use aws_sdk_s3::operation::copy_object::CopyObjectOutput;
use aws_sdk_s3::Client;
use aws_smithy_mocks::{mock, MockResponseInterceptor, Rule, RuleMode};
use drpilot_shared::budget::RequestBudget;
use drpilot_shared::copy::{apply_changes, Change, CopyTuning};
use drpilot_shared::{ErrorKind, S3Uri};

const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>1</RequestId></Error>";

/// An S3 client answering from `rules`, with the SDK's own retries off so every answer
/// reaches the budget (with them on, S3 has to say SlowDown three times in a row first).
fn s3(rules: &[&Rule]) -> Client {
    let mut interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::Sequential);
    for rule in rules {
        interceptor = interceptor.with_rule(rule);
    }
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .http_client(aws_smithy_mocks::create_mock_http_client())
        .interceptor(interceptor);
    Client::from_conf(config.build())
}

fn copies(n: usize) -> tokio::sync::mpsc::Receiver<Change> {
    let (tx, rx) = tokio::sync::mpsc::channel(n.max(1));
    for i in 0..n {
        tx.try_send(Change::Copy {
            from: S3Uri::new("dr-target", format!("_staging/run/{i}.json")).unwrap(),
            to: S3Uri::new("dr-target", format!("root/{i}.json")).unwrap(),
            size: Some(10),
        })
        .unwrap();
    }
    rx
}

#[tokio::test]
async fn copies_s3_throttles_are_slowed_down_and_get_through() {
    let throttled = mock!(Client::copy_object)
        .sequence()
        .http_status(503, Some(SLOW_DOWN.to_owned()))
        .times(2)
        .output(|| CopyObjectOutput::builder().build())
        .times(3)
        .build();
    let budget = RequestBudget::new(1000.0);
    let tuning = CopyTuning {
        concurrency: 1,
        ..CopyTuning::default()
    };
    let stats = apply_changes(&s3(&[&throttled]), copies(3), tuning, &budget, None)
        .await
        .unwrap();
    assert_eq!(stats.copied, 3);
    assert_eq!(
        throttled.num_calls(),
        5,
        "two throttled tries, three copies"
    );
    assert_eq!(budget.slow_downs(), 2);
    // Halved twice, then climbing again by INCREASE_PER_SECOND / rate a success.
    let rate = budget.rate();
    assert!(rate > 250.0 && rate < 250.1, "{rate}");
}

#[tokio::test]
async fn a_prefix_s3_keeps_throttling_fails_retryable_after_bounded_tries() {
    let throttled = mock!(Client::copy_object)
        .sequence()
        .http_status(503, Some(SLOW_DOWN.to_owned()))
        .repeatedly()
        .build();
    let budget = RequestBudget::new(1000.0);
    let err = apply_changes(
        &s3(&[&throttled]),
        copies(1),
        CopyTuning::default(),
        &budget,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Retryable, "{err}");
    assert!(err.message.contains("SlowDown"), "{err}");
    assert_eq!(throttled.num_calls(), 6, "the first try and five more");
    assert_eq!(budget.slow_downs(), 5);
}

/// A range's child whose run teardown fenced (the Map failed, this invocation ran on):
/// the copy engine asks the fence before its first copy, finds it up, and copies
/// nothing, failing with the fence's `ServiceError`.
#[tokio::test]
async fn a_fenced_copy_engine_copies_nothing() {
    use aws_sdk_s3::operation::get_object::GetObjectOutput;
    use aws_sdk_s3::primitives::ByteStream;
    use drpilot_shared::fence::Fence;

    let fence_up = mock!(Client::get_object)
        .then_output(|| {
            GetObjectOutput::builder()
                .body(ByteStream::from_static(
                    br#"{"raised_at":"2026-12-01T00:00:00Z","execution_arn":null,"reason":"promote failed with Retryable"}"#,
                ))
                .build()
        });
    let copy = mock!(Client::copy_object).then_output(|| CopyObjectOutput::builder().build());
    let client = s3(&[&fence_up, &copy]);
    let fence = Fence::new(
        client.clone(),
        S3Uri::new("evidence", "receipts/runs/run/ranges/fence.json").unwrap(),
        None,
    );
    let budget = RequestBudget::new(1000.0).with_fence(fence);
    let err = apply_changes(&client, copies(3), CopyTuning::default(), &budget, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::ServiceError, "{err}");
    assert!(
        err.message.contains("promote failed with Retryable"),
        "{err}"
    );
    assert_eq!(fence_up.num_calls(), 1);
    assert_eq!(copy.num_calls(), 0);
}
