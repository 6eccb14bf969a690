//! Why things happen, as one enum: the reason of every Event the operator publishes and of
//! every problem that makes a BrokerGroup `Degraded`. One list, so a reason cannot be
//! misspelt in one place, and whether it is a Warning is decided once, here.

use std::fmt;

/// An Event's reason, or a problem's (the `Degraded` condition's reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    // Changes of live.
    /// A backup took over from a live that was lost (Warning).
    FailedOver,
    /// The preferred member has the live role again (Normal).
    FailedBack,
    /// A planned hand-over showed: switchover, rolling upgrade or fence (Normal).
    SwitchedOver,
    /// A group has no live broker (Warning).
    LiveLost,
    /// Two members of a group report live (Warning).
    SplitBrain,
    /// The operator released a dead live's Lease for an in-sync backup (Warning).
    OperatorFailover,
    /// A live agreed to hand its role over (Normal).
    SwitchingOver,
    /// A switchover asked for could not be made (Warning; also a problem).
    SwitchoverFailed,
    /// A pod was deleted so that it comes back at the update revision (Normal).
    RollingUpgrade,
    // The network and grouping.
    /// A connector has not linked for a minute or more (Warning).
    ConnectorUnlinked,
    /// Such a connector linked again (Normal).
    ConnectorLinked,
    /// A connector's target BrokerGroup does not exist (problem).
    ConnectorTargetMissing,
    /// A connector's password Secret or key does not exist (problem).
    ConnectorSecretMissing,
    /// A connected BrokerGroup's cluster user differs from this one's (problem).
    ConnectorUserMismatch,
    /// The LOCAL grouping handler's group has a new live (Normal).
    GroupingHandlerMoved,
    // Secrets and the database.
    /// The named cluster credentials Secret does not exist (problem).
    CredentialsSecretMissing,
    /// The users Secret does not exist (problem).
    UsersSecretMissing,
    /// The database URL or CA Secret is missing or lacks its key (Warning; problem).
    DatabaseSecretMissing,
    /// A member cannot reach the shared database (Warning; problem).
    DatabaseUnreachable,
    /// Such a member reaches it again (Normal).
    DatabaseReachable,
    /// A live took the database lease again under a new epoch (Warning).
    LeaseRetaken,
    /// An annotation the operator reads is garbled (problem).
    InvalidAnnotation,
    /// The spec breaks a rule (Warning; the Degraded reason, nothing is applied).
    InvalidSpec,
    /// The cluster credentials Secret lacks its password (Warning; as InvalidSpec).
    InvalidCredentials,
    // Pods.
    /// Member pods cannot be scheduled (Warning; problem).
    PodsUnschedulable,
    // Scaling down.
    /// A group being removed was asked to move its messages to the others (Normal).
    Draining,
    /// A group being removed cannot move its messages (Warning; problem).
    DrainStuck,
    /// A drained group's objects were deleted; its claims were kept (Normal).
    GroupRemoved,
    // Fencing and hibernation.
    /// A member was fenced (Normal).
    Fenced,
    /// A member was unfenced and rejoins its group (Normal).
    Unfenced,
    /// A member could not be fenced or unfenced (Warning; problem).
    FenceFailed,
    /// Every broker pod was stopped (Normal).
    Hibernated,
    /// The broker pods were started again (Normal).
    Resumed,
    // Volumes.
    /// Journal claims were asked to grow to `storage.size` (Normal).
    VolumeExpanding,
    /// Journal claims cannot grow (Warning; problem).
    VolumeExpansionRefused,
    // TLS and authorization.
    /// The operator issued the member certificate (Normal).
    CertificateIssued,
    /// The operator issued a new member certificate for a due one (Normal).
    CertificateRenewed,
    /// The certificate Secret is missing or unusable (Warning; nothing is applied).
    TlsSecretInvalid,
    /// authorization.permissionsFrom's ConfigMap or Secret is missing or unreadable
    /// (Warning; nothing is applied).
    AuthorizationInvalid,
    /// A connected BrokerGroup's TLS does not match this one's (problem; the connector is
    /// left out).
    ConnectorTlsMismatch,
}

impl Reason {
    /// PascalCase, as Kubernetes shows reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FailedOver => "FailedOver",
            Reason::FailedBack => "FailedBack",
            Reason::SwitchedOver => "SwitchedOver",
            Reason::LiveLost => "LiveLost",
            Reason::SplitBrain => "SplitBrain",
            Reason::OperatorFailover => "OperatorFailover",
            Reason::SwitchingOver => "SwitchingOver",
            Reason::SwitchoverFailed => "SwitchoverFailed",
            Reason::RollingUpgrade => "RollingUpgrade",
            Reason::ConnectorUnlinked => "ConnectorUnlinked",
            Reason::ConnectorLinked => "ConnectorLinked",
            Reason::ConnectorTargetMissing => "ConnectorTargetMissing",
            Reason::ConnectorSecretMissing => "ConnectorSecretMissing",
            Reason::ConnectorUserMismatch => "ConnectorUserMismatch",
            Reason::GroupingHandlerMoved => "GroupingHandlerMoved",
            Reason::CredentialsSecretMissing => "CredentialsSecretMissing",
            Reason::UsersSecretMissing => "UsersSecretMissing",
            Reason::DatabaseSecretMissing => "DatabaseSecretMissing",
            Reason::DatabaseUnreachable => "DatabaseUnreachable",
            Reason::DatabaseReachable => "DatabaseReachable",
            Reason::LeaseRetaken => "LeaseRetaken",
            Reason::InvalidAnnotation => "InvalidAnnotation",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::InvalidCredentials => "InvalidCredentials",
            Reason::PodsUnschedulable => "PodsUnschedulable",
            Reason::Draining => "Draining",
            Reason::DrainStuck => "DrainStuck",
            Reason::GroupRemoved => "GroupRemoved",
            Reason::Fenced => "Fenced",
            Reason::Unfenced => "Unfenced",
            Reason::FenceFailed => "FenceFailed",
            Reason::Hibernated => "Hibernated",
            Reason::Resumed => "Resumed",
            Reason::VolumeExpanding => "VolumeExpanding",
            Reason::VolumeExpansionRefused => "VolumeExpansionRefused",
            Reason::CertificateIssued => "CertificateIssued",
            Reason::CertificateRenewed => "CertificateRenewed",
            Reason::TlsSecretInvalid => "TlsSecretInvalid",
            Reason::AuthorizationInvalid => "AuthorizationInvalid",
            Reason::ConnectorTlsMismatch => "ConnectorTlsMismatch",
        }
    }

    /// Whether an Event with this reason is a Warning (something a person should look at).
    pub fn warning(self) -> bool {
        matches!(
            self,
            Reason::FailedOver
                | Reason::LiveLost
                | Reason::SplitBrain
                | Reason::OperatorFailover
                | Reason::SwitchoverFailed
                | Reason::ConnectorUnlinked
                | Reason::ConnectorTargetMissing
                | Reason::ConnectorSecretMissing
                | Reason::ConnectorUserMismatch
                | Reason::CredentialsSecretMissing
                | Reason::UsersSecretMissing
                | Reason::DatabaseSecretMissing
                | Reason::DatabaseUnreachable
                | Reason::LeaseRetaken
                | Reason::InvalidAnnotation
                | Reason::InvalidSpec
                | Reason::InvalidCredentials
                | Reason::PodsUnschedulable
                | Reason::DrainStuck
                | Reason::FenceFailed
                | Reason::VolumeExpansionRefused
                | Reason::TlsSecretInvalid
                | Reason::AuthorizationInvalid
                | Reason::ConnectorTlsMismatch
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that needs attention: the `Degraded` condition shows the first one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
}

impl Problem {
    pub fn new(reason: Reason, message: impl Into<String>) -> Problem {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// A change worth a Kubernetes Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub reason: Reason,
    pub note: String,
}

impl Transition {
    pub fn new(reason: Reason, note: impl Into<String>) -> Transition {
        Transition {
            reason,
            note: note.into(),
        }
    }

    pub fn warning(&self) -> bool {
        self.reason.warning()
    }
}
