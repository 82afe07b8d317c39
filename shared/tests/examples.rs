//! Every example profile under `examples/profiles/` is a valid profile, and each shows
//! what its runbook asks for.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap should fail loudly

use drpilot_shared::component::ComponentKind;
use drpilot_shared::Profile;

fn example(name: &str) -> Profile {
    let path = drpilot_testkit::repo_root().join(format!("examples/profiles/{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    Profile::from_json(name, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn kinds(profile: &Profile) -> Vec<&'static str> {
    profile.components.iter().map(|c| c.kind.name()).collect()
}

#[test]
fn every_example_profile_parses_and_validates() {
    let dir = drpilot_testkit::repo_root().join("examples/profiles");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.path()
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "aeterna",
            "llm-marketplace",
            "quenyan",
            "signalcraft",
            "vaultmesh"
        ]
    );
    for name in names {
        example(&name);
    }
}

#[test]
fn each_example_expresses_its_runbook() {
    let vaultmesh = example("vaultmesh");
    assert_eq!(vaultmesh.rto_target_seconds, 1800);
    assert!(vaultmesh.components.is_empty() && vaultmesh.control_plane.is_some());
    assert_eq!(vaultmesh.checks.len(), 2);

    let aeterna = example("aeterna");
    assert_eq!(aeterna.rto_target_seconds, 900);
    let targets: Vec<(&str, u64)> = aeterna
        .components
        .iter()
        .filter(|c| matches!(c.kind, ComponentKind::SsmCommand(_)))
        .map(|c| (c.name.as_str(), c.rto_target_seconds))
        .collect();
    assert_eq!(
        targets,
        [("postgres", 300), ("qdrant", 600), ("redis", 120)]
    );

    let quenyan = example("quenyan");
    assert!(quenyan.full_validation);
    assert!(quenyan
        .components
        .iter()
        .any(|c| c.after_restore && c.kind.name() == "lambda"));

    let marketplace = example("llm-marketplace");
    assert_eq!(marketplace.rto_target_seconds, 14_400);
    let kinds = kinds(&marketplace);
    assert!(
        kinds.contains(&"rds_snapshot") && kinds.contains(&"aws_backup") && kinds.contains(&"http"),
        "{kinds:?}"
    );

    let signalcraft = example("signalcraft");
    assert!(signalcraft.control_plane.is_some());
}
