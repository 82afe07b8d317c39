//! The run lock against real S3 calls on the local emulator.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use chrono::Duration;
use drpilot_shared::lock::{Acquired, Released, RunLock};
use drpilot_shared::{ErrorKind, S3Uri};
use drpilot_testkit::LocalAws;

const BUCKET: &str = "target-bucket";

async fn lock(aws: &LocalAws) -> RunLock {
    aws.create_bucket(BUCKET).await;
    RunLock::new(
        aws.s3().clone(),
        S3Uri::new(BUCKET, "locks/drill.lock").expect("valid location"),
    )
}

#[tokio::test]
async fn second_acquire_fails_with_lock_held() {
    let aws = LocalAws::start().await;
    let lock = lock(&aws).await;
    let ttl = Duration::hours(1);
    assert_eq!(
        lock.acquire("run-a", Some("arn:exec:a"), ttl)
            .await
            .unwrap(),
        Acquired::Fresh
    );
    let err = lock.acquire("run-b", None, ttl).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::LockHeld);
    assert!(
        err.message.contains("run-a") && err.message.contains("arn:exec:a"),
        "{err}"
    );
    // The holder is untouched.
    assert_eq!(lock.read().await.unwrap().unwrap().0.run_id, "run-a");
}

#[tokio::test]
async fn the_owner_reacquiring_renews_it_for_the_new_execution() {
    let aws = LocalAws::start().await;
    let lock = lock(&aws).await;
    lock.acquire("run-a", Some("exec-1"), Duration::minutes(5))
        .await
        .unwrap();
    let (before, _) = lock.read().await.unwrap().unwrap();
    // A retried attempt of the execution that took it answers as the first did.
    assert_eq!(
        lock.acquire("run-a", Some("exec-1"), Duration::minutes(5))
            .await
            .unwrap(),
        Acquired::Fresh
    );
    assert_eq!(
        lock.acquire("run-a", Some("exec-2"), Duration::hours(1))
            .await
            .unwrap(),
        Acquired::AlreadyOwned
    );
    let (after, _) = lock.read().await.unwrap().unwrap();
    assert_eq!(after.run_id, "run-a");
    assert_eq!(after.acquired_at, before.acquired_at, "the run's since");
    assert_eq!(after.execution_arn.as_deref(), Some("exec-2"));
    assert!(after.expires_at > before.expires_at + Duration::minutes(50));
    // After a bringup that failed, an execution releases only a lock it took itself.
    assert_eq!(
        lock.release_taken_by("run-a", "exec-3").await.unwrap(),
        Released::KeptForRun
    );
    assert_eq!(
        lock.release_taken_by("run-a", "exec-2").await.unwrap(),
        Released::Released
    );
}

#[tokio::test]
async fn release_by_a_non_owner_is_refused() {
    let aws = LocalAws::start().await;
    let lock = lock(&aws).await;
    lock.acquire("run-a", None, Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(
        lock.release("run-b").await.unwrap(),
        Released::OwnedByOther {
            owner: "run-a".into()
        }
    );
    assert_eq!(lock.read().await.unwrap().unwrap().0.run_id, "run-a");
    assert_eq!(lock.release("run-a").await.unwrap(), Released::Released);
    assert!(lock.read().await.unwrap().is_none());
    assert_eq!(
        lock.release("run-a").await.unwrap(),
        Released::NotHeld,
        "release is idempotent"
    );
    // Free again: a new run can take it.
    assert_eq!(
        lock.acquire("run-c", None, Duration::hours(1))
            .await
            .unwrap(),
        Acquired::Fresh
    );
}

#[tokio::test]
async fn an_expired_lock_is_taken_over() {
    let aws = LocalAws::start().await;
    let lock = lock(&aws).await;
    lock.acquire("run-old", None, Duration::seconds(-1))
        .await
        .unwrap();
    let took = lock
        .acquire("run-new", Some("exec-new"), Duration::hours(1))
        .await
        .unwrap();
    match &took {
        Acquired::TakenOver { previous } => assert_eq!(previous.run_id, "run-old"),
        other => panic!("expected a takeover, got {other:?}"),
    }
    assert_eq!(lock.read().await.unwrap().unwrap().0.run_id, "run-new");
    // A retried attempt of the execution answers as its first attempt did.
    assert_eq!(
        lock.acquire("run-new", Some("exec-new"), Duration::hours(1))
            .await
            .unwrap(),
        took
    );
    // The old owner can no longer release it.
    assert!(matches!(
        lock.release("run-old").await.unwrap(),
        Released::OwnedByOther { .. }
    ));
}

#[tokio::test]
async fn concurrent_acquirers_exactly_one_wins() {
    let aws = LocalAws::start().await;
    let lock = lock(&aws).await;
    for round in 0..5 {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let lock = lock.clone();
                tokio::spawn(async move {
                    lock.acquire(&format!("run-{round}-{i}"), None, Duration::hours(1))
                        .await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            match task.await.unwrap() {
                Ok(Acquired::Fresh) => winners.push(format!("run-{round}-{i}")),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(err) => assert_eq!(err.kind, ErrorKind::LockHeld, "{err}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        assert_eq!(lock.read().await.unwrap().unwrap().0.run_id, winners[0]);
        assert_eq!(lock.release(&winners[0]).await.unwrap(), Released::Released);
    }
}

#[tokio::test]
async fn a_foreign_object_at_the_lock_key_is_not_overwritten() {
    let aws = LocalAws::start().await;
    let lock = lock(&aws).await;
    aws.put_text(BUCKET, "locks/drill.lock", "not json").await;
    let err = lock
        .acquire("run-a", None, Duration::hours(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::IntegrityError);
    assert_eq!(
        aws.get_text(BUCKET, "locks/drill.lock").await.as_deref(),
        Some("not json")
    );
}
