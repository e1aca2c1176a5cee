//! Default seeding: the policy a newly connected tool gets, and why.
//!
//! In order: explicit annotations, then the verbs in the tool's name (whatever its casing or
//! separators), then `approval_needed` ("start conservative"). The one unacceptable error is
//! a write tool seeded `auto`, so a write verb anywhere in the name outweighs a read verb,
//! and outweighs a `read_only_hint` that the name contradicts.

use super::{Annotations, Policy, PolicySource};

/// The seeded policy of one tool, with the rule that chose it and a sentence for admins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeded {
    pub policy: Policy,
    pub source: PolicySource,
    pub reason: String,
}

/// Verbs that only read. A name whose verbs are all here is seeded `auto`.
const READ_VERBS: &[&str] = &[
    "get",
    "list",
    "search",
    "fetch",
    "read",
    "find",
    "lookup",
    "look",
    "show",
    "view",
    "describe",
    "count",
    "retrieve",
    "browse",
    "inspect",
    "download",
    "preview",
    "peek",
    "has",
    "is",
    "exists",
    "stat",
    "status",
    "diff",
    "whoami",
    "ping",
    "summarize",
    "analyze",
    "explain",
    "compare",
    "calculate",
    "compute",
    "estimate",
];

/// Verbs that change something, send something or run something.
const WRITE_VERBS: &[&str] = &[
    "create",
    "add",
    "insert",
    "new",
    "post",
    "put",
    "patch",
    "update",
    "edit",
    "modify",
    "change",
    "set",
    "unset",
    "write",
    "save",
    "store",
    "upload",
    "append",
    "replace",
    "rename",
    "move",
    "copy",
    "delete",
    "del",
    "remove",
    "rm",
    "destroy",
    "drop",
    "purge",
    "erase",
    "clear",
    "trash",
    "archive",
    "unarchive",
    "restore",
    "undelete",
    "send",
    "reply",
    "forward",
    "notify",
    "publish",
    "share",
    "invite",
    "email",
    "reset",
    "revoke",
    "grant",
    "assign",
    "unassign",
    "approve",
    "reject",
    "deny",
    "enable",
    "disable",
    "activate",
    "deactivate",
    "suspend",
    "unsuspend",
    "block",
    "unblock",
    "lock",
    "unlock",
    "ban",
    "kick",
    "close",
    "open",
    "reopen",
    "merge",
    "fork",
    "push",
    "commit",
    "checkout",
    "rebase",
    "revert",
    "transition",
    "resolve",
    "cancel",
    "start",
    "stop",
    "restart",
    "reboot",
    "shutdown",
    "kill",
    "terminate",
    "run",
    "execute",
    "exec",
    "invoke",
    "call",
    "trigger",
    "deploy",
    "install",
    "uninstall",
    "upgrade",
    "import",
    "sync",
    "apply",
    "provision",
    "deprovision",
    "register",
    "unregister",
    "subscribe",
    "unsubscribe",
    "follow",
    "unfollow",
    "star",
    "unstar",
    "pin",
    "unpin",
    "react",
    "comment",
    "schedule",
    "book",
    "join",
    "leave",
    "accept",
    "decline",
    "submit",
    "confirm",
    "signout",
    "signoff",
    "logout",
    "make",
    "mark",
    "flag",
    "link",
    "unlink",
    "attach",
    "detach",
    "connect",
    "disconnect",
    "transfer",
    "convert",
    "migrate",
    "mute",
    "unmute",
    "watch",
    "unwatch",
    "escalate",
    "init",
    "initialize",
    "setup",
    "configure",
    "toggle",
    "reorder",
    "duplicate",
    "clone",
    "wipe",
    "rotate",
    "renew",
    "refresh",
    "increment",
    "decrement",
    "upsert",
    "undo",
    "redo",
    "pay",
    "charge",
    "refund",
    "purchase",
    "buy",
    "bulk",
    "batch",
    "generate",
    "stage",
    "unstage",
    "tag",
    "label",
    "snooze",
    "dismiss",
    "acknowledge",
    "ack",
    "quarantine",
    "isolate",
    "wipe",
    "lockout",
    "expire",
    "extend",
    "enroll",
    "unenroll",
    "license",
    "unlicense",
];

/// The seeded policy for a tool with this name and these annotations.
pub fn seed(name: &str, annotations: &Annotations) -> Seeded {
    let words = split_words(name);
    // Two-word verbs too: `signOut`, `log_out`, `look_up`.
    let pairs: Vec<String> = words
        .windows(2)
        .map(|w| format!("{}{}", w[0], w[1]))
        .collect();
    let candidates = || words.iter().chain(pairs.iter());
    let write = candidates().find(|w| WRITE_VERBS.contains(&w.as_str()));
    let read = candidates().find(|w| READ_VERBS.contains(&w.as_str()));

    if annotations.destructive == Some(true) {
        return seeded(
            Policy::ApprovalNeeded,
            PolicySource::Annotation,
            "annotations: destructive_hint is true".into(),
        );
    }
    if annotations.read_only == Some(false) {
        return seeded(
            Policy::ApprovalNeeded,
            PolicySource::Annotation,
            "annotations: read_only_hint is false".into(),
        );
    }
    if annotations.read_only == Some(true) {
        if let Some(verb) = write {
            return seeded(
                Policy::ApprovalNeeded,
                PolicySource::Verb,
                format!(
                    "name has the write verb {verb:?} although read_only_hint is true: \
                     start conservative"
                ),
            );
        }
        return seeded(
            Policy::Auto,
            PolicySource::Annotation,
            "annotations: read_only_hint is true and destructive_hint is not".into(),
        );
    }
    if let Some(verb) = write {
        return seeded(
            Policy::ApprovalNeeded,
            PolicySource::Verb,
            format!("name has the write verb {verb:?}"),
        );
    }
    if let Some(verb) = read {
        return seeded(
            Policy::Auto,
            PolicySource::Verb,
            format!("name has the read verb {verb:?} and no write verb"),
        );
    }
    seeded(
        Policy::ApprovalNeeded,
        PolicySource::Fallback,
        format!("no annotations and no known verb in {name:?}: start conservative"),
    )
}

fn seeded(policy: Policy, source: PolicySource, reason: String) -> Seeded {
    Seeded {
        policy,
        source,
        reason,
    }
}

/// Splits a name into lower-case words at separators and case changes:
/// `getUser`, `Get-MgUser`, `users.list`, `HTMLParser`, `list_groups_v2`.
pub fn split_words(name: &str) -> Vec<String> {
    let chars: Vec<char> = name.chars().collect();
    let mut words = Vec::new();
    let mut current = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            flush(&mut words, &mut current);
            continue;
        }
        if !current.is_empty() && starts_new_word(&chars, i) {
            flush(&mut words, &mut current);
        }
        current.extend(c.to_lowercase());
    }
    flush(&mut words, &mut current);
    words
}

fn starts_new_word(chars: &[char], i: usize) -> bool {
    let (prev, c) = (chars[i - 1], chars[i]);
    let next = chars.get(i + 1).copied();
    (prev.is_lowercase() && c.is_uppercase())
        || (prev.is_alphabetic() && c.is_ascii_digit())
        || (prev.is_ascii_digit() && c.is_alphabetic())
        // The last capital of an acronym starts the next word: HTMLParser → html, parser.
        || (prev.is_uppercase() && c.is_uppercase() && next.is_some_and(char::is_lowercase))
}

fn flush(words: &mut Vec<String>, current: &mut String) {
    if !current.is_empty() {
        words.push(std::mem::take(current));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_every_naming_style() {
        assert_eq!(split_words("get_user"), ["get", "user"]);
        assert_eq!(split_words("getUser"), ["get", "user"]);
        assert_eq!(split_words("users.list"), ["users", "list"]);
        assert_eq!(split_words("list-groups"), ["list", "groups"]);
        assert_eq!(split_words("Get-MgUser"), ["get", "mg", "user"]);
        assert_eq!(split_words("chat.postMessage"), ["chat", "post", "message"]);
        assert_eq!(split_words("HTMLParser"), ["html", "parser"]);
        assert_eq!(split_words("listV2Items"), ["list", "v", "2", "items"]);
        assert_eq!(split_words("__weird__--name.."), ["weird", "name"]);
        assert_eq!(split_words(""), Vec::<String>::new());
    }

    const NONE: Annotations = Annotations {
        read_only: None,
        destructive: None,
        idempotent: None,
        open_world: None,
    };

    #[test]
    fn annotations_come_before_verbs() {
        let destructive = Annotations {
            destructive: Some(true),
            ..NONE
        };
        let read_only = Annotations {
            read_only: Some(true),
            ..NONE
        };
        let not_read_only = Annotations {
            read_only: Some(false),
            ..NONE
        };
        let s = seed("get_user", &destructive);
        assert_eq!(
            (s.policy, s.source),
            (Policy::ApprovalNeeded, PolicySource::Annotation)
        );
        let s = seed("get_user", &not_read_only);
        assert_eq!(
            (s.policy, s.source),
            (Policy::ApprovalNeeded, PolicySource::Annotation)
        );
        let s = seed("directory_tree", &read_only);
        assert_eq!(
            (s.policy, s.source),
            (Policy::Auto, PolicySource::Annotation)
        );
        // A read-only hint never makes a write verb `auto`.
        let s = seed("delete_user", &read_only);
        assert_eq!(
            (s.policy, s.source),
            (Policy::ApprovalNeeded, PolicySource::Verb)
        );
        // destructive_hint false alone says nothing about writing: the verb decides.
        let not_destructive = Annotations {
            destructive: Some(false),
            ..NONE
        };
        let s = seed("create_user", &not_destructive);
        assert_eq!(
            (s.policy, s.source),
            (Policy::ApprovalNeeded, PolicySource::Verb)
        );
    }

    #[test]
    fn every_seed_has_a_reason() {
        for name in ["get_user", "delete_user", "frobnicate"] {
            assert!(!seed(name, &NONE).reason.is_empty());
        }
        assert!(seed("frobnicate", &NONE).reason.contains("frobnicate"));
    }

    /// What a careful admin would choose for a tool.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Expect {
        /// Only reads: `auto`.
        R,
        /// Writes, sends or runs something: `approval_needed`.
        W,
        /// Only reads, but the name gives no read verb or also has a word that is a write
        /// verb elsewhere: seeded `approval_needed` on purpose, and the admin relaxes it.
        C,
    }
    use Expect::{C, R, W};

    impl Expect {
        fn policy(self) -> Policy {
            match self {
                R => Policy::Auto,
                W | C => Policy::ApprovalNeeded,
            }
        }
    }

    /// Real tool names from public APIs and MCP servers, with what a careful admin would
    /// choose.
    const CATALOGUE: &[(&str, Expect)] = &[
        // GitHub MCP server
        ("get_me", R),
        ("get_issue", R),
        ("list_issues", R),
        ("search_issues", R),
        ("create_issue", W),
        ("update_issue", W),
        ("add_issue_comment", W),
        ("get_issue_comments", R),
        ("list_pull_requests", R),
        ("get_pull_request", R),
        ("get_pull_request_files", R),
        ("get_pull_request_status", R),
        ("create_pull_request", W),
        ("merge_pull_request", W),
        ("update_pull_request_branch", W),
        ("create_pull_request_review", W),
        ("get_pull_request_reviews", R),
        ("get_file_contents", R),
        ("create_or_update_file", W),
        ("push_files", W),
        ("create_repository", W),
        ("fork_repository", W),
        ("create_branch", W),
        ("list_commits", R),
        ("get_commit", C),
        ("search_code", R),
        ("search_repositories", R),
        ("search_users", R),
        ("list_branches", R),
        ("list_tags", R),
        ("delete_file", W),
        ("list_notifications", R),
        ("dismiss_notification", W),
        ("list_workflows", R),
        ("run_workflow", W),
        ("rerun_workflow_run", W),
        ("cancel_workflow_run", W),
        ("get_job_logs", R),
        ("list_code_scanning_alerts", R),
        ("request_copilot_review", W),
        ("assign_copilot_to_issue", W),
        // Atlassian (Jira, Confluence) MCP servers
        ("getJiraIssue", R),
        ("createJiraIssue", W),
        ("editJiraIssue", W),
        ("searchJiraIssuesUsingJql", R),
        ("transitionJiraIssue", W),
        ("getTransitionsForJiraIssue", R),
        ("addCommentToJiraIssue", W),
        ("lookupJiraAccountId", R),
        ("getVisibleJiraProjects", R),
        ("atlassianUserInfo", C),
        ("getConfluencePage", R),
        ("createConfluencePage", W),
        ("updateConfluencePage", W),
        ("searchConfluenceUsingCql", R),
        ("jira_get_issue", R),
        ("jira_search", R),
        ("jira_create_issue", W),
        ("jira_update_issue", W),
        ("jira_delete_issue", W),
        ("jira_add_comment", W),
        ("jira_add_worklog", W),
        ("jira_get_worklog", R),
        ("jira_transition_issue", W),
        ("jira_link_to_epic", W),
        ("jira_get_transitions", R),
        ("jira_batch_create_issues", W),
        ("confluence_search", R),
        ("confluence_get_page", R),
        ("confluence_create_page", W),
        ("confluence_delete_page", W),
        // Slack Web API and Slack MCP
        ("chat.postMessage", W),
        ("chat.update", W),
        ("chat.delete", W),
        ("chat.scheduleMessage", W),
        ("chat.postEphemeral", W),
        ("conversations.list", R),
        ("conversations.history", C),
        ("conversations.info", C),
        ("conversations.create", W),
        ("conversations.invite", W),
        ("conversations.kick", W),
        ("conversations.archive", W),
        ("users.list", R),
        ("users.info", C),
        ("users.lookupByEmail", C),
        ("reactions.add", W),
        ("files.upload", W),
        ("search.messages", R),
        ("slack_list_channels", R),
        ("slack_post_message", W),
        ("slack_reply_to_thread", W),
        ("slack_add_reaction", W),
        ("slack_get_channel_history", R),
        ("slack_get_thread_replies", R),
        ("slack_get_users", R),
        ("slack_get_user_profile", R),
        // Microsoft Graph PowerShell
        ("Get-MgUser", R),
        ("New-MgUser", W),
        ("Update-MgUser", W),
        ("Remove-MgUser", W),
        ("Get-MgGroup", R),
        ("New-MgGroup", W),
        ("Get-MgGroupMember", R),
        ("New-MgGroupMember", W),
        ("Remove-MgGroupMemberByRef", W),
        ("Set-MgUserLicense", W),
        ("Revoke-MgUserSignInSession", W),
        ("Reset-MgUserAuthenticationMethodPassword", W),
        ("Get-MgUserMemberOf", R),
        ("Invoke-MgGraphRequest", W),
        ("Get-MgDirectoryRole", R),
        ("New-MgDirectoryRoleMemberByRef", W),
        ("Get-MgAuditLogSignIn", R),
        ("Update-MgUserPassword", W),
        ("Get-MgUserManager", R),
        ("Set-MgUserManagerByRef", W),
        ("Test-MgUserExistence", C),
        ("Confirm-MgUserMemberGroup", C),
        // Microsoft Entra ID / helpdesk style tools
        ("get_user", R),
        ("list_users", R),
        ("add_user_to_group", W),
        ("remove_user_from_group", W),
        ("reset_password", W),
        ("disable_user", W),
        ("enable_user", W),
        ("revoke_sessions", W),
        ("list_group_members", R),
        ("assign_license", W),
        ("unlock_account", W),
        ("create_user", W),
        ("delete_user", W),
        ("send_email", W),
        ("get_sign_in_logs", R),
        ("list_devices", R),
        ("wipe_device", W),
        ("isolate_device", W),
        // Google Workspace (Admin SDK, Gmail, Drive, Calendar)
        ("users.get", R),
        ("users.insert", W),
        ("users.update", W),
        ("users.patch", W),
        ("users.delete", W),
        ("users.undelete", W),
        ("users.makeAdmin", W),
        ("users.signOut", W),
        ("groups.list", R),
        ("groups.insert", W),
        ("members.insert", W),
        ("members.delete", W),
        ("members.hasMember", R),
        ("members.list", R),
        ("users.messages.send", W),
        ("users.messages.list", R),
        ("users.messages.get", R),
        ("users.messages.trash", W),
        ("users.drafts.create", W),
        ("users.watch", W),
        ("files.list", R),
        ("files.get", R),
        ("files.create", W),
        ("files.copy", W),
        ("files.export", C),
        ("permissions.create", W),
        ("events.list", R),
        ("events.insert", W),
        ("events.quickAdd", W),
        ("events.move", W),
        ("events.instances", C),
        ("freebusy.query", C),
        // ConnectWise Manage style tools
        ("get_ticket", R),
        ("search_tickets", R),
        ("create_ticket", W),
        ("update_ticket", W),
        ("add_ticket_note", W),
        ("close_ticket", W),
        ("assign_ticket", W),
        ("get_company", R),
        ("search_companies", R),
        ("get_company_contacts", R),
        ("create_contact", W),
        ("list_configurations", R),
        ("create_time_entry", W),
        ("get_agreement", R),
        ("list_service_boards", R),
        // MCP filesystem server
        ("read_file", R),
        ("read_multiple_files", R),
        ("read_text_file", R),
        ("read_media_file", R),
        ("write_file", W),
        ("edit_file", W),
        ("create_directory", W),
        ("list_directory", R),
        ("list_directory_with_sizes", R),
        ("directory_tree", C),
        ("move_file", W),
        ("search_files", R),
        ("get_file_info", R),
        ("list_allowed_directories", R),
        // MCP git server
        ("git_status", R),
        ("git_diff_unstaged", R),
        ("git_diff_staged", R),
        ("git_diff", R),
        ("git_commit", W),
        ("git_add", W),
        ("git_reset", W),
        ("git_log", C),
        ("git_create_branch", W),
        ("git_checkout", W),
        ("git_show", R),
        ("git_init", W),
        ("git_branch", W),
        // Other MCP servers and common REST shapes
        ("fetch", R),
        ("puppeteer_navigate", W),
        ("puppeteer_screenshot", C),
        ("brave_web_search", R),
        ("query", C),
        ("execute_sql", W),
        ("run_query", W),
        ("list_tables", R),
        ("describe_table", R),
        ("create_entities", W),
        ("delete_entities", W),
        ("read_graph", R),
        ("search_nodes", R),
        ("open_nodes", C),
        ("sequentialthinking", C),
        ("get_current_time", R),
        ("convert_time", C),
        ("stripe.refunds.create", W),
        ("stripe.charges.list", R),
        ("POST /users", W),
        ("DELETE /users/{id}", W),
        ("GET /users/{id}", R),
        ("listUsersV2", R),
        ("getOrCreateUser", W),
        ("syncDirectory", W),
        ("bulkUpdateUsers", W),
    ];

    #[test]
    fn catalogue_of_real_tool_names_is_classified_as_an_admin_would() {
        assert!(CATALOGUE.len() >= 150, "only {} names", CATALOGUE.len());
        let mut wrong = Vec::new();
        for (name, expected) in CATALOGUE {
            let got = seed(name, &NONE);
            if got.policy != expected.policy() {
                wrong.push(format!(
                    "{name}: expected {expected:?}, got {:?} ({})",
                    got.policy, got.reason
                ));
            }
        }
        assert!(wrong.is_empty(), "misclassified:\n{}", wrong.join("\n"));
    }

    #[test]
    fn no_write_tool_in_the_catalogue_is_seeded_auto() {
        // The one unacceptable error, checked on its own so a regression names it.
        for (name, expected) in CATALOGUE {
            if *expected == W {
                assert_ne!(seed(name, &NONE).policy, Policy::Auto, "{name} seeded auto");
            }
        }
    }
}
