import Events
import NodeMap
import Wire

/// What the detector asks its shell to do. The core never touches a socket or a clock.
public enum DetectorOutput: Hashable, Sendable {
    /// Unicast `Body` to a node's heartbeat endpoint (the port is the node's `heartbeatPort` in the map).
    case send(Body, to: IPAddress, port: UInt16)
    /// Send `Body` to the whole cluster (the shell sends it to the multicast group).
    case multicast(Body)
    /// Map changes the detector made (suspect / alive / dead), in the order they were made.
    case changes([NodeMapChange])
    /// `by` suspects or declared *this* node at incarnation `past`: the node takes an incarnation
    /// above it and announces at once (the shell reports it as `node.refuted`).
    case refute(DetectorEvent.Accusation, by: IPAddress, past: UInt64)
    /// What the detector noticed or decided (only events at or above `settings.eventLevel`).
    case event(DetectorEvent)
}

/// Counters of one detector (exported by the daemon, summed by the simulator).
public struct DetectorStats: Hashable, Sendable {
    public var heartbeatsSent = 0
    public var heartbeatsReceived = 0
    /// Heartbeats whose send was more than η/2 late (this process was slow: others may suspect it).
    public var lateHeartbeats = 0
    /// Ticks that came more than `period + driftTolerance` after the previous one.
    public var lateTicks = 0
    public var watchesSent = 0
    public var watchesReceived = 0
    /// Times the observed node changed (ring re-picked).
    public var ringChanges = 0
    public var suspicions = 0
    /// Suspicions cleared by a heartbeat, a probe answer, an announce or a higher incarnation.
    public var refutedSuspicions = 0
    /// Direct probes and indirect probe requests this node sent as the suspecting observer.
    public var probesSent = 0
    public var probeRequestsSent = 0
    /// Helper role: probes sent on behalf of another node, and answers forwarded to it.
    public var probesRelayed = 0
    public var probeAcksRelayed = 0
    /// Answers this node gave to probes of itself.
    public var probeAcksSent = 0
    public var deathsDeclared = 0
    /// Deaths learned from a `.dead` notice that changed this node's map.
    public var deathsLearned = 0
    public var deadNoticesSent = 0
    public var duplicateDeadNotices = 0
    /// `.refute` outputs (this node was declared dead, or suspected above its own incarnation).
    public var refutations = 0
    /// Suspicions of this node at its own incarnation, answered with a heartbeat to the accuser.
    public var suspicionsAnswered = 0
    /// Datagrams this node's own receive sockets dropped (reported by the shell: the kernel's count).
    public var localDrops = 0
    /// Suspects given `lossGrace` because of them.
    public var lossGraces = 0
    /// Runs probed after a declared death (`Run.swift`), and the deaths their verdicts declared
    /// (also counted in `deathsDeclared`).
    public var runsProbed = 0
    public var runDeaths = 0
    /// Sends dropped because the map had no heartbeat port for the destination.
    public var unroutable = 0

    public init() {}
}
