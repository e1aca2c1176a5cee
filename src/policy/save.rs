//! Planning a Save: from the tools stored now and what the caller asked, the changes that
//! make up one revision. Pure; the store runs a plan inside its write transaction.

use super::seed::seed;
use super::{Policy, PolicySource, Tool, ToolChange, ToolDefinition};
use std::collections::HashMap;

/// A connect: new tools are seeded, known tools keep their policy (whoever set it) and take
/// the integration's new description, schema and annotations, and tools no longer offered
/// are removed.
pub fn plan_connect(
    integration_id: &str,
    offered: &[ToolDefinition],
    existing: &[Tool],
) -> Vec<ToolChange> {
    let mut current: HashMap<&str, &Tool> = existing.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut changes = Vec::new();
    for def in offered {
        match current.remove(def.name.as_str()) {
            Some(old) => {
                let updated = Tool {
                    description: def.description.clone(),
                    input_schema_json: def.input_schema_json.clone(),
                    annotations: def.annotations,
                    ..old.clone()
                };
                if &updated != old {
                    changes.push(ToolChange::Upsert(updated));
                }
            }
            None => {
                let seeded = seed(&def.name, &def.annotations);
                changes.push(ToolChange::Upsert(Tool {
                    integration_id: integration_id.to_owned(),
                    name: def.name.clone(),
                    description: def.description.clone(),
                    input_schema_json: def.input_schema_json.clone(),
                    annotations: def.annotations,
                    policy: seeded.policy,
                    manager_approval: false,
                    source: seeded.source,
                    source_reason: seeded.reason,
                    revision: 0,
                }));
            }
        }
    }
    let mut gone: Vec<&Tool> = current.into_values().collect();
    gone.sort_by(|a, b| a.name.cmp(&b.name));
    changes.extend(gone.into_iter().map(|t| ToolChange::Remove {
        integration_id: t.integration_id.clone(),
        name: t.name.clone(),
    }));
    changes
}

/// One entry of a SetPolicy batch, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEdit {
    pub integration_id: String,
    pub tool_name: String,
    pub policy: Policy,
    /// `None` keeps the tool's current setting (when the policy still allows one).
    pub manager_approval: Option<bool>,
}

/// A SetPolicy entry naming a tool that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTool {
    pub index: usize,
    pub integration_id: String,
    pub tool_name: String,
}

/// A SetPolicy batch: every edit applies, or none does. Edits that change nothing are left
/// out; when none changes anything there is no new revision.
pub fn plan_set_policy(
    edits: &[PolicyEdit],
    existing: &[Tool],
    actor_key_id: &str,
) -> Result<Vec<ToolChange>, UnknownTool> {
    let current: HashMap<(&str, &str), &Tool> = existing
        .iter()
        .map(|t| ((t.integration_id.as_str(), t.name.as_str()), t))
        .collect();
    let mut changes = Vec::new();
    for (index, edit) in edits.iter().enumerate() {
        let Some(old) = current.get(&(edit.integration_id.as_str(), edit.tool_name.as_str()))
        else {
            return Err(UnknownTool {
                index,
                integration_id: edit.integration_id.clone(),
                tool_name: edit.tool_name.clone(),
            });
        };
        let updated = apply_edit(old, edit, actor_key_id);
        if updated.policy != old.policy
            || updated.manager_approval != old.manager_approval
            || old.source != PolicySource::Admin
        {
            changes.push(ToolChange::Upsert(updated));
        }
    }
    Ok(changes)
}

/// The tool after an admin's edit; manager approval exists only with approval needed.
pub fn apply_edit(old: &Tool, edit: &PolicyEdit, actor_key_id: &str) -> Tool {
    let manager_approval = edit.policy == Policy::ApprovalNeeded
        && edit.manager_approval.unwrap_or(old.manager_approval);
    Tool {
        policy: edit.policy,
        manager_approval,
        source: PolicySource::Admin,
        source_reason: format!("set by admin key {actor_key_id}"),
        ..old.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Annotations;

    fn def(name: &str) -> ToolDefinition {
        ToolDefinition {
            name: name.into(),
            description: format!("{name} description"),
            input_schema_json: String::new(),
            annotations: Annotations::default(),
        }
    }

    fn tools_after(existing: &[Tool], changes: &[ToolChange]) -> Vec<Tool> {
        let mut map: HashMap<String, Tool> = existing
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        for c in changes {
            match c {
                ToolChange::Upsert(t) => {
                    map.insert(t.name.clone(), t.clone());
                }
                ToolChange::Remove { name, .. } => {
                    map.remove(name);
                }
            }
        }
        let mut v: Vec<Tool> = map.into_values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    #[test]
    fn connect_seeds_new_keeps_admin_choices_and_removes_the_rest() {
        let first = plan_connect(
            "entra",
            &[def("get_user"), def("reset_password"), def("delete_user")],
            &[],
        );
        assert_eq!(first.len(), 3);
        let stored = tools_after(&[], &first);
        let edit = PolicyEdit {
            integration_id: "entra".into(),
            tool_name: "reset_password".into(),
            policy: Policy::Disabled,
            manager_approval: None,
        };
        let stored = tools_after(&stored, &plan_set_policy(&[edit], &stored, "k1").unwrap());
        let again = plan_connect(
            "entra",
            &[def("get_user"), def("reset_password"), def("list_groups")],
            &stored,
        );
        // get_user and reset_password are unchanged: no change entries for them.
        assert_eq!(again.len(), 2, "{again:?}");
        let after = tools_after(&stored, &again);
        let names: Vec<&str> = after.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["get_user", "list_groups", "reset_password"]);
        let reset = after.iter().find(|t| t.name == "reset_password").unwrap();
        assert_eq!(
            (reset.policy, reset.source),
            (Policy::Disabled, PolicySource::Admin)
        );
    }

    #[test]
    fn set_policy_names_the_unknown_entry_and_drops_manager_flag_off_approval() {
        let stored = tools_after(&[], &plan_connect("entra", &[def("reset_password")], &[]));
        let bad = PolicyEdit {
            integration_id: "entra".into(),
            tool_name: "nope".into(),
            policy: Policy::Auto,
            manager_approval: None,
        };
        let good = PolicyEdit {
            tool_name: "reset_password".into(),
            policy: Policy::ApprovalNeeded,
            manager_approval: Some(true),
            ..bad.clone()
        };
        let err = plan_set_policy(&[good.clone(), bad], &stored, "k").unwrap_err();
        assert_eq!(err.index, 1);
        let with_manager = tools_after(&stored, &plan_set_policy(&[good], &stored, "k").unwrap());
        assert!(with_manager[0].manager_approval);
        let auto = PolicyEdit {
            integration_id: "entra".into(),
            tool_name: "reset_password".into(),
            policy: Policy::Auto,
            manager_approval: None,
        };
        let after = tools_after(
            &with_manager,
            &plan_set_policy(std::slice::from_ref(&auto), &with_manager, "k").unwrap(),
        );
        assert!(!after[0].manager_approval);
        // Saving the same admin choice again changes nothing.
        assert!(plan_set_policy(&[auto], &after, "k").unwrap().is_empty());
    }
}
