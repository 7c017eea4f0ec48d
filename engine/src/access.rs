//! Who may do what: permissions, roles (viewer, operator, admin, or the
//! host's own, optionally scoped to definitions), principals, and the one
//! check that both the HTTP API and a host's own code ([`Guarded`]) use.
//! Every mutating call through [`Guarded`], allowed or denied, is written
//! to the audit trail ([`crate::audit`]) when one is given.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use skald_model::{OperatorAction, SagaId};

use crate::audit::{AuditEntry, AuditLog};
use crate::view::{BreakerView, CancelOutcome, ListFilter, SagaPage, SagaView};
use crate::{Engine, EngineError, StartOptions};

/// One kind of operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// See sagas, their histories, breakers, metrics and health.
    View,
    /// Start sagas.
    Start,
    /// Cancel sagas.
    Cancel,
    /// Operator actions on Failed sagas (retry compensation, resume a
    /// step, mark resolved, turn back).
    Act,
    /// Actions on many sagas at once, by filter.
    Bulk,
    /// Reset a circuit breaker.
    ResetBreaker,
    /// Read the audit trail.
    Audit,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 7] = [
        Permission::View,
        Permission::Start,
        Permission::Cancel,
        Permission::Act,
        Permission::Bulk,
        Permission::ResetBreaker,
        Permission::Audit,
    ];

    /// Its name in configuration files and errors (`reset_breaker`).
    pub fn name(self) -> &'static str {
        match self {
            Permission::View => "view",
            Permission::Start => "start",
            Permission::Cancel => "cancel",
            Permission::Act => "act",
            Permission::Bulk => "bulk",
            Permission::ResetBreaker => "reset_breaker",
            Permission::Audit => "audit",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A named set of permissions, optionally only over some definitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// Its name (`viewer`, `operator`, `admin`, or the host's own).
    pub name: String,
    /// What it may do.
    pub permissions: BTreeSet<Permission>,
    /// Only sagas of these definitions (`None`: every definition).
    #[serde(default)]
    pub definitions: Option<BTreeSet<String>>,
}

impl Role {
    /// Sees everything, changes nothing.
    pub fn viewer() -> Role {
        Role::of("viewer", &[Permission::View])
    }

    /// Sees, starts, cancels, acts on failed sagas, resets breakers.
    pub fn operator() -> Role {
        use Permission::*;
        Role::of("operator", &[View, Start, Cancel, Act, ResetBreaker])
    }

    /// Everything, bulk actions and the audit trail included.
    pub fn admin() -> Role {
        Role::of("admin", &Permission::ALL)
    }

    /// A built-in role by name.
    pub fn built_in(name: &str) -> Option<Role> {
        match name {
            "viewer" => Some(Role::viewer()),
            "operator" => Some(Role::operator()),
            "admin" => Some(Role::admin()),
            _ => None,
        }
    }

    fn of(name: &str, permissions: &[Permission]) -> Role {
        Role {
            name: name.to_owned(),
            permissions: permissions.iter().copied().collect(),
            definitions: None,
        }
    }

    /// Limits the role to sagas of `definitions`.
    pub fn only(mut self, definitions: impl IntoIterator<Item = impl Into<String>>) -> Role {
        self.definitions = Some(definitions.into_iter().map(Into::into).collect());
        self
    }

    /// Whether it covers sagas of `definition`.
    pub fn covers(&self, definition: &str) -> bool {
        self.definitions
            .as_ref()
            .is_none_or(|only| only.contains(definition))
    }
}

/// Who is calling, and in which role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// A name for the audit trail and operator actions (`alice`,
    /// `billing-service`).
    pub name: String,
    /// What they may do.
    pub role: Role,
}

/// A call the principal's role does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{principal} (role {role}) may not {permission}{}", .definition.as_ref().map(|d| format!(" sagas of {d:?}")).unwrap_or_default())]
pub struct Denied {
    /// Who.
    pub principal: String,
    /// Their role.
    pub role: String,
    /// What they asked for.
    pub permission: Permission,
    /// The definition concerned, if the role is scoped and it is not among
    /// its definitions.
    pub definition: Option<String>,
}

impl Principal {
    /// A principal in `role`.
    pub fn new(name: impl Into<String>, role: Role) -> Principal {
        Principal {
            name: name.into(),
            role,
        }
    }

    /// The check: may this principal do `permission`, on sagas of
    /// `definition` if the call concerns one?
    pub fn check(&self, permission: Permission, definition: Option<&str>) -> Result<(), Denied> {
        let denied = |definition: Option<&str>| Denied {
            principal: self.name.clone(),
            role: self.role.name.clone(),
            permission,
            definition: definition.map(str::to_owned),
        };
        if !self.role.permissions.contains(&permission) {
            return Err(denied(None));
        }
        match definition {
            Some(definition) if !self.role.covers(definition) => Err(denied(Some(definition))),
            _ => Ok(()),
        }
    }
}

/// Why a guarded call did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuardError {
    /// The principal may not.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The call was allowed but its audit record could not be written, so
    /// it was not made.
    #[error("the audit trail could not record the call: {0}")]
    Audit(EngineError),
    /// A bulk action matched more sagas than one call acts on.
    #[error("more than {max} sagas match: narrow the filter (by definition or status)")]
    TooMany {
        /// [`BULK_MAX`].
        max: usize,
    },
}

/// Sagas one bulk call acts on at most.
pub const BULK_MAX: usize = 10_000;

/// What a bulk call does to each saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    /// Cancel it.
    Cancel,
    /// An operator action (on Failed sagas).
    Operator(OperatorAction),
}

impl BulkAction {
    /// The permission the action itself needs.
    pub fn permission(self) -> Permission {
        match self {
            BulkAction::Cancel => Permission::Cancel,
            BulkAction::Operator(_) => Permission::Act,
        }
    }
}

/// What a bulk call found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BulkOutcome {
    /// Sagas the filter matched.
    pub matching: usize,
    /// Sagas the action was recorded for (0 for a dry run).
    pub done: usize,
    /// Sagas whose action the engine refused, and why (an operator action
    /// on a saga that is not Failed, say).
    pub refused: Vec<(SagaId, String)>,
}

impl BulkOutcome {
    fn counted(matching: usize) -> BulkOutcome {
        BulkOutcome {
            matching,
            done: 0,
            refused: Vec::new(),
        }
    }
}

/// An [`Engine`] as one principal sees it: every call checked against the
/// principal's role, every mutating call (allowed or denied) written to
/// the audit trail before it is made.
#[derive(Clone)]
pub struct Guarded {
    engine: Engine,
    principal: Principal,
    audit: Option<Arc<AuditLog>>,
}

impl Guarded {
    /// `engine` as `principal` sees it.
    pub fn new(engine: Engine, principal: Principal) -> Guarded {
        Guarded {
            engine,
            principal,
            audit: None,
        }
    }

    /// Records every mutating call in `audit`.
    pub fn with_audit(mut self, audit: Arc<AuditLog>) -> Guarded {
        self.audit = Some(audit);
        self
    }

    /// The principal.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The engine underneath (unchecked).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A saga's view; a saga of a definition outside a scoped role is
    /// denied, not hidden.
    pub async fn view(&self, saga: SagaId) -> Result<Option<SagaView>, GuardError> {
        self.principal.check(Permission::View, None)?;
        let view = self.engine.view(saga).await?;
        if let Some(view) = &view {
            self.principal
                .check(Permission::View, Some(&view.definition))?;
        }
        Ok(view)
    }

    /// A page of sagas; a scoped role must name one of its definitions
    /// (`filter.definition`), so that pages stay whole.
    pub async fn list(&self, filter: ListFilter) -> Result<SagaPage, GuardError> {
        let definition = self.scope_of(filter.definition.as_deref());
        self.principal.check(Permission::View, definition)?;
        Ok(self.engine.list(filter).await?)
    }

    /// The definition a call over many sagas concerns, for the check: a
    /// role scoped to some definitions must name one of them (a call over
    /// every definition is checked as one it does not cover).
    fn scope_of<'a>(&self, named: Option<&'a str>) -> Option<&'a str> {
        match (&self.principal.role.definitions, named) {
            (Some(_), None) => Some("(every definition)"),
            (_, named) => named,
        }
    }

    /// Checks `permission` over the sagas of `definition` (or of every
    /// definition), as [`Guarded::list`] does; for the event stream.
    pub fn check_scope(
        &self,
        permission: Permission,
        definition: Option<&str>,
    ) -> Result<(), Denied> {
        self.principal.check(permission, self.scope_of(definition))
    }

    /// The circuit breakers.
    pub fn breakers(&self) -> Result<Vec<BreakerView>, GuardError> {
        self.principal.check(Permission::View, None)?;
        Ok(self.engine.breakers())
    }

    /// Starts a saga (see [`Engine::start_with`]).
    pub async fn start(
        &self,
        definition: &str,
        input: &serde_json::Value,
        options: StartOptions,
    ) -> Result<SagaId, GuardError> {
        let target = format!("definition {definition}");
        self.guard(Permission::Start, Some(definition), &target, "")
            .await?;
        Ok(self.engine.start_with(definition, input, options).await?)
    }

    /// Cancels a saga (see [`Engine::cancel`]).
    pub async fn cancel(&self, saga: SagaId, reason: &str) -> Result<CancelOutcome, GuardError> {
        let definition = self.definition_of(saga).await?;
        self.guard(
            Permission::Cancel,
            definition.as_deref(),
            &saga.to_string(),
            reason,
        )
        .await?;
        Ok(self.engine.cancel(saga, reason).await?)
    }

    /// An operator action on a Failed saga, recorded as by this principal
    /// (see [`Engine::operate`]).
    pub async fn operate(
        &self,
        saga: SagaId,
        action: OperatorAction,
        why: &str,
    ) -> Result<(), GuardError> {
        let definition = self.definition_of(saga).await?;
        let target = format!("{saga} {action:?}");
        self.guard(Permission::Act, definition.as_deref(), &target, why)
            .await?;
        let who = self.principal.name.clone();
        Ok(self.engine.operate(saga, action, who, why).await?)
    }

    /// Resets a circuit breaker (see [`Engine::reset_breaker`]).
    pub async fn reset_breaker(&self, service: &str, why: &str) -> Result<bool, GuardError> {
        let target = format!("breaker {service}");
        self.guard(Permission::ResetBreaker, None, &target, why)
            .await?;
        Ok(self.engine.reset_breaker(service))
    }

    /// One action on every saga `filter` matches (its `after` and `limit`
    /// are ignored), at most [`BULK_MAX`]: needs [`Permission::Bulk`] and
    /// the action's own permission. With `dry_run`, only counts them (and
    /// records nothing). One audit record for the whole call; each saga's
    /// action is in its own log as usual.
    pub async fn bulk(
        &self,
        filter: ListFilter,
        action: BulkAction,
        why: &str,
        dry_run: bool,
    ) -> Result<BulkOutcome, GuardError> {
        let definition = filter.definition.clone();
        let scope = definition.as_deref().unwrap_or("any");
        let checked = self.scope_of(definition.as_deref());
        let verdict = self
            .principal
            .check(Permission::Bulk, checked)
            .and_then(|()| self.principal.check(action.permission(), checked));
        if let Err(denied) = verdict {
            if !dry_run {
                let target = format!("bulk {action:?} (definition {scope:?})");
                self.record(Permission::Bulk, &target, why, &Err(denied.clone()))
                    .await?;
            }
            return Err(denied.into());
        }
        let matching = self.matching(filter).await?;
        if dry_run {
            return Ok(BulkOutcome::counted(matching.len()));
        }
        let count = matching.len();
        let target = format!("bulk {action:?} of {count} saga(s) (definition {scope:?})");
        self.record(Permission::Bulk, &target, why, &Ok(())).await?;
        let mut outcome = BulkOutcome::counted(matching.len());
        for saga in matching {
            let result = match action {
                BulkAction::Cancel => self.engine.cancel(saga, why).await.map(|_| ()),
                BulkAction::Operator(action) => {
                    let who = self.principal.name.clone();
                    self.engine.operate(saga, action, who, why).await
                }
            };
            match result {
                Ok(()) => outcome.done += 1,
                Err(error) => outcome.refused.push((saga, error.to_string())),
            }
        }
        Ok(outcome)
    }

    /// Every saga `filter` matches, refusing more than [`BULK_MAX`].
    async fn matching(&self, mut filter: ListFilter) -> Result<Vec<SagaId>, GuardError> {
        filter.after = None;
        filter.limit = 1_000;
        let mut found = Vec::new();
        loop {
            let page = self.engine.list(filter.clone()).await?;
            found.extend(page.sagas.iter().map(|s| s.id));
            if found.len() > BULK_MAX {
                return Err(GuardError::TooMany { max: BULK_MAX });
            }
            match page.next_after {
                Some(after) => filter.after = Some(after),
                None => return Ok(found),
            }
        }
    }

    /// The saga's definition, for the check (`None`: no such saga, which
    /// the engine's own call reports).
    async fn definition_of(&self, saga: SagaId) -> Result<Option<String>, GuardError> {
        Ok(self.engine.view(saga).await?.map(|view| view.definition))
    }

    /// Checks a mutating call and writes its audit record (allowed or
    /// denied) before it is made.
    async fn guard(
        &self,
        permission: Permission,
        definition: Option<&str>,
        target: &str,
        reason: &str,
    ) -> Result<(), GuardError> {
        let verdict = self.principal.check(permission, definition);
        self.record(permission, target, reason, &verdict).await?;
        Ok(verdict?)
    }

    /// Writes the audit record of a call (if there is an audit trail).
    async fn record(
        &self,
        permission: Permission,
        target: &str,
        reason: &str,
        verdict: &Result<(), Denied>,
    ) -> Result<(), GuardError> {
        if let Some(audit) = &self.audit {
            let entry = AuditEntry::new(&self.principal, permission, target, reason, verdict);
            audit.record(&entry).await.map_err(GuardError::Audit)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_roles_allow_what_they_say() {
        use Permission::*;
        let table = [
            (Role::viewer(), vec![View]),
            (
                Role::operator(),
                vec![View, Start, Cancel, Act, ResetBreaker],
            ),
            (Role::admin(), Permission::ALL.to_vec()),
        ];
        for (role, allowed) in table {
            let principal = Principal::new("p", role.clone());
            for permission in Permission::ALL {
                let verdict = principal.check(permission, Some("order"));
                assert_eq!(
                    verdict.is_ok(),
                    allowed.contains(&permission),
                    "{} {permission}",
                    role.name
                );
            }
        }
    }

    #[test]
    fn a_scoped_role_covers_only_its_definitions_and_says_which() {
        let principal = Principal::new("rita", Role::operator().only(["refund"]));
        assert!(principal.check(Permission::Cancel, Some("refund")).is_ok());
        assert!(principal.check(Permission::Cancel, None).is_ok());
        let denied = principal
            .check(Permission::Cancel, Some("order"))
            .unwrap_err();
        assert_eq!(
            denied.to_string(),
            "rita (role operator) may not cancel sagas of \"order\""
        );
        let denied = principal
            .check(Permission::Audit, Some("refund"))
            .unwrap_err();
        assert_eq!(denied.to_string(), "rita (role operator) may not audit");
    }
}
