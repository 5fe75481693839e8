import Events
import NodeMap

/// Timing of the failure detector: `TimeSpan`s of the caller's monotonic clock.
///
/// The invariants are checked by `init` (and `validate()`), each with the reason in its message:
/// a detector with δ < 3η would suspect a node after two lost heartbeats.
public struct DetectorSettings: Sendable, Equatable {
    public static let millisecond = TimeSpan.milliseconds(1)
    public static let second = TimeSpan.seconds(1)
    /// Longest accepted duration for any setting (1 hour): keeps `now + duration` far from overflow.
    public static let maxDuration: TimeSpan = .seconds(3600)

    /// η: how often a node sends a heartbeat to its observer(s). At least 1 ms and at most 65.535 s,
    /// because heartbeats carry it in 16-bit milliseconds.
    public var period: TimeSpan
    /// δ: how long the observer waits for a heartbeat before it suspects the observed node. At least 3η.
    public var timeout: TimeSpan
    /// k: how many other members are asked to probe a suspect (indirect probes). 0 = none, at most 16.
    public var confirmations: Int
    /// How long probes of a suspect may take before it is declared dead; probes are re-sent every η/2
    /// within it. At least η.
    public var confirmWindow: TimeSpan
    /// Extra grace for a *new* member: a brand-new predecessor gets
    /// `δ + startupSlack + ceil(log2 N)·η` before its first heartbeat is due (see `startupGrace`).
    public var startupSlack: TimeSpan
    /// A tick that comes more than `period + driftTolerance` after the previous one means this process
    /// was paused (descheduled, stopped, swapped): the pause is added to the observed node's deadline.
    public var driftTolerance: TimeSpan
    /// A node that sent `.watch` gets heartbeats for this long after it (observers re-send `.watch`
    /// every third of it while they observe). Default max(3δ, 6 s): the successor gets heartbeats
    /// anyway, watches only cover views that briefly differ, so they need not cost many packets.
    public var watchLifetime: TimeSpan
    /// Extra probing time a suspect gets when this node's own receive sockets dropped datagrams
    /// (the kernel's buffer overflowed: a flood, or this process too slow to read) since the
    /// suspect was last heard: the silence may be ours, so the suspect's answers get one more
    /// chance to get through. Granted once per suspicion (Lifeguard's local health, bounded).
    /// Default: the confirm window. 0 turns it off.
    public var lossGrace: TimeSpan

    /// How often an observer re-sends `.watch`.
    public var watchRefresh: TimeSpan { max(watchLifetime / 3, period) }
    /// Events below this level are not emitted (the simulator runs thousands of cores).
    public var eventLevel: LogLevel

    public enum Error: Swift.Error, Equatable, CustomStringConvertible {
        case periodOutOfRange(period: TimeSpan)
        case timeoutTooShort(timeout: TimeSpan, period: TimeSpan)
        case confirmationsOutOfRange(Int)
        case confirmWindowTooShort(confirmWindow: TimeSpan, period: TimeSpan)
        case durationTooLong(name: String, value: TimeSpan)

        public var description: String {
            switch self {
            case .periodOutOfRange(let p):
                "heartbeat period η = \(Self.ms(p)) is out of range: it must be between 1 ms and 65535 ms "
                    + "(heartbeats carry it in 16-bit milliseconds)"
            case .timeoutTooShort(let t, let p):
                "timeout δ = \(Self.ms(t)) is shorter than 3 × period η = 3 × \(Self.ms(p)) = \(Self.ms(3 * p)): "
                    + "the detector would suspect a node after two lost heartbeats"
            case .confirmationsOutOfRange(let k):
                "confirmations k = \(k) is out of range: it must be between 0 (no indirect probes) and 16"
            case .confirmWindowTooShort(let w, let p):
                "confirm window = \(Self.ms(w)) is shorter than the period η = \(Self.ms(p)): "
                    + "a suspect would be declared dead before a second probe round"
            case .durationTooLong(let name, let v):
                "\(name) = \(Self.ms(v)) is longer than the 1-hour limit"
            }
        }

        static func ms(_ d: TimeSpan) -> String { DurationText.format(d.nanos) }
    }

    /// Checked settings. The defaults are the `lan` preset's, the daemon's: η = 150 ms, δ = 450 ms,
    /// k = 3, confirm window = 600 ms, startup slack = 1 s, drift tolerance = η/2,
    /// watch lifetime = max(3δ, 6 s), loss grace = the confirm window.
    public init(
        period: TimeSpan = .milliseconds(150), timeout: TimeSpan = .milliseconds(450), confirmations: Int = 3,
        confirmWindow: TimeSpan = .milliseconds(600), startupSlack: TimeSpan = .seconds(1), driftTolerance: TimeSpan? = nil,
        watchLifetime: TimeSpan? = nil, lossGrace: TimeSpan? = nil, eventLevel: LogLevel = .info
    ) throws {
        self.period = period
        self.timeout = timeout
        self.confirmations = confirmations
        self.confirmWindow = confirmWindow
        self.startupSlack = startupSlack
        self.driftTolerance = driftTolerance ?? period / 2
        self.watchLifetime = watchLifetime ?? max(timeout * 3, Self.second * 6)
        self.lossGrace = lossGrace ?? confirmWindow
        self.eventLevel = eventLevel
        try validate()
    }

    /// One switched LAN (the daemon's default): detection in about 1 s at about Serf's packet budget.
    public static let lan = try! DetectorSettings()
    /// Routed or congested networks: η = 1 s, δ = 5 s, confirm window 3 s (memberlist's WAN spirit).
    public static let wan = try! DetectorSettings(
        period: second, timeout: 5 * second, confirmations: 3, confirmWindow: 3 * second, startupSlack: 2 * second)
    /// The named presets, for `--preset`.
    public static let presets: [(name: String, settings: DetectorSettings)] = [("lan", .lan), ("wan", .wan)]
    /// The daemon's defaults.
    public static let `default` = lan

    /// Throws the first broken invariant (for settings whose fields were changed after `init`).
    public func validate() throws {
        guard period >= Self.millisecond, period <= 65535 * Self.millisecond else {
            throw Error.periodOutOfRange(period: period)
        }
        for (name, value) in [
            ("timeout δ", timeout), ("confirm window", confirmWindow), ("startup slack", startupSlack),
            ("drift tolerance", driftTolerance), ("watch lifetime", watchLifetime), ("loss grace", lossGrace),
        ] where value > Self.maxDuration {
            throw Error.durationTooLong(name: name, value: value)
        }
        guard timeout >= 3 * period else { throw Error.timeoutTooShort(timeout: timeout, period: period) }
        guard (0...16).contains(confirmations) else { throw Error.confirmationsOutOfRange(confirmations) }
        guard confirmWindow >= period else {
            throw Error.confirmWindowTooShort(confirmWindow: confirmWindow, period: period)
        }
    }

    /// The grace a brand-new predecessor gets before its first heartbeat is due, in a ring of
    /// `memberCount` members: `δ + startupSlack + ceil(log2 N)·η`. The log2 N term covers the
    /// announce of the new node reaching every map (it spreads in about log N relay steps) and the
    /// new node learning who observes it.
    public func startupGrace(memberCount: Int) -> TimeSpan {
        timeout + startupSlack + period * UInt64(ceilLog2(memberCount))
    }

    /// η in the 16-bit milliseconds a heartbeat carries.
    public var periodMillis: UInt16 { UInt16(clamping: period.nanos / 1_000_000) }
}

/// ceil(log2 n) for n ≥ 1 (0 for n ≤ 1).
@inlinable
public func ceilLog2(_ n: Int) -> Int {
    n <= 1 ? 0 : Int.bitWidth - (n - 1).leadingZeroBitCount
}

