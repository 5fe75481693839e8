import Detector
import Discovery
import NodeMap
import Wire

public enum LogLevel: Int, Comparable, Sendable, CustomStringConvertible {
    case debug = 0, info, notice, warning, error
    public static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue < b.rawValue }
    public var description: String {
        switch self {
        case .debug: "debug"
        case .info: "info"
        case .notice: "notice"
        case .warning: "warning"
        case .error: "error"
        }
    }
}

public struct ClusterConfig: Sendable {
    public var cluster: String
    public var me: SelfInfo
    /// Initial incarnation; the daemon uses wall-clock milliseconds at start so that it grows across restarts.
    public var incarnation: UInt64
    public var discovery: DiscoverySettings
    /// nil disables the failure detector (discovery expiry still declares silent nodes dead).
    public var detector: DetectorSettings?
    public var seed: UInt64
    /// Least severe log effect produced (the simulator asks for warnings only: strings cost time).
    public var logLevel: LogLevel
    public var timeBaseUnixNanos: Int64

    public init(
        cluster: String, me: SelfInfo, incarnation: UInt64, discovery: DiscoverySettings = .default,
        detector: DetectorSettings?, seed: UInt64, logLevel: LogLevel = .info, timeBaseUnixNanos: Int64 = 0
    ) {
        self.cluster = cluster
        self.me = me
        self.incarnation = incarnation
        self.discovery = discovery
        self.detector = detector
        self.seed = seed
        self.logLevel = logLevel
        self.timeBaseUnixNanos = timeBaseUnixNanos
    }
}

/// What the node asks its shell (daemon or simulator) to do.
public enum Effect: Sendable, Equatable {
    /// A datagram for the cluster group on every interface, or every interface but `except`.
    case multicast([UInt8], except: Int?)
    /// A datagram for a node's discovery port.
    case unicast([UInt8], to: IPAddress)
    /// A datagram for a node's heartbeat port (detector traffic).
    case heartbeat([UInt8], to: IPAddress, port: UInt16)
    case log(LogLevel, String)
}

public struct ClusterCounters: Sendable, Equatable {
    public var datagramsReceived = 0
    public var drops: [String: Int] = [:]
    public var multicastSent = 0
    public var unicastSent = 0
    public var heartbeatDatagramsSent = 0
    public var mapChanges = 0
}

/// One node's protocol: Discovery and Detector over one NodeMap, fed datagrams and clock ticks,
/// returning datagrams to send. Pure and deterministic; the daemon and the simulator both run it.
public struct ClusterNode: Sendable {
    public let config: ClusterConfig
    public private(set) var map: NodeMap
    public private(set) var discovery: DiscoveryCore
    public private(set) var detector: DetectorCore?
    public private(set) var counters = ClusterCounters()
    private var messageID: UInt32 = 0
    private var out: [Effect] = []

    public init(config: ClusterConfig, now: UInt64) {
        self.config = config
        self.map = NodeMap(timeBaseUnixNanos: config.timeBaseUnixNanos)
        self.discovery = DiscoveryCore(
            settings: config.discovery, me: config.me, incarnation: config.incarnation, seed: config.seed,
            detectorRunning: config.detector != nil)
        if var d = config.detector {
            // The detector's own log filter follows the node's, so no string is built for nothing.
            d.logLevel = config.logLevel <= .debug ? .debug : config.logLevel <= .notice ? .info : .warning
            self.detector = DetectorCore(settings: d, selfAddress: config.me.address, now: now)
        }
    }

    public var address: IPAddress { config.me.address }
    public var incarnation: UInt64 { discovery.incarnation }
    public var isRunning: Bool { discovery.started }

    /// The earliest time `tick` must be called.
    public var nextDeadline: UInt64 {
        min(discovery.nextDeadline, detector?.nextDeadline ?? UInt64.max)
    }

    // MARK: Inputs

    public mutating func start(now: UInt64) -> [Effect] {
        let d = discovery.start(now: now, map: &map)
        apply(d, now: now)
        return flush()
    }

    public mutating func tick(now: UInt64) -> [Effect] {
        guard discovery.started else { return [] }
        apply(discovery.tick(now: now, map: &map), now: now)
        if detector != nil {
            let o = detector!.tick(now: now, map: &map)
            applyDetector(o, now: now)
        }
        return flush()
    }

    public mutating func stop(now: UInt64) -> [Effect] {
        apply(discovery.stop(now: now, map: &map), now: now)
        return flush()
    }

    /// Our interface addresses changed.
    public mutating func interfacesChanged(aliases: [Alias], now: UInt64) -> [Effect] {
        apply(discovery.interfacesChanged(aliases: aliases, now: now, map: &map), now: now)
        return flush()
    }

    /// A datagram arrived on cluster interface `interface` (index into the shell's interface list).
    public mutating func receive(_ bytes: [UInt8], interface: Int, now: UInt64) -> [Effect] {
        guard discovery.started else { return [] }
        counters.datagramsReceived += 1
        let m: Message
        do {
            m = try Message.decode(bytes)
        } catch {
            drop(error.counterName)
            if config.logLevel <= .debug { out.append(.log(.debug, "dropped datagram: \(error)")) }
            return flush()
        }
        guard m.header.cluster == config.cluster else {
            drop("other_cluster")
            return flush()
        }
        if m.header.flags.contains(.authenticated) {
            // Cluster keys are not built yet: a tagged datagram cannot be verified, so it is refused.
            drop("unverifiable_tag")
            return flush()
        }
        guard m.header.origin != config.me.address else {
            drop("own")
            return flush()
        }
        let (process, relay) = discovery.admit(m, interface: interface, now: now)
        if case .relay(let fwd, let except)? = relay, let bytes = try? fwd.encode() {
            out.append(.multicast(bytes, except: except))
            counters.multicastSent += 1
        }
        guard process else { return flush() }
        if config.logLevel <= .debug && m.header.type != .heartbeat {
            out.append(.log(.debug, "rx \(m.header.type) from \(m.header.origin) hops=\(m.header.hops) incarnation=\(m.header.incarnation) on interface \(interface)"))
        }
        switch m.body {
        case .announce, .join, .leave, .mapSync:
            apply(discovery.receive(m, now: now, map: &map), now: now)
        case .heartbeat, .watch, .probe, .probeAck, .probeRequest, .suspect, .dead:
            if m.header.type != .dead { map.touch(m.header.origin, now: now) }
            if detector == nil, case .suspect(let target, let inc) = m.body, target == config.me.address,
                inc >= discovery.incarnation
            {
                // Without a detector a suspicion of us is still refuted, so that stale deaths heal.
                apply(discovery.refute(now: now, map: &map), now: now)
            }
            if detector != nil {
                let o = detector!.receive(
                    m.body, from: m.header.origin, originIncarnation: m.header.incarnation, now: now, map: &map)
                applyDetector(o, now: now)
            }
        case .processExit(let p):
            if config.logLevel <= .notice {
                out.append(.log(.notice, "process \(p.pid) (\(p.name)) on \(p.node) exited with status \(p.status)"))
            }
        }
        return flush()
    }

    // MARK: Plumbing

    private mutating func drop(_ reason: String) {
        counters.drops[reason, default: 0] += 1
    }

    private mutating func flush() -> [Effect] {
        defer { out.removeAll(keepingCapacity: true) }
        return out
    }

    private mutating func header(_ type: MessageType) -> Header {
        messageID &+= 1
        var flags: HeaderFlags = []
        if config.me.explicitID { flags.insert(.explicitID) }
        return Header(
            type: type, flags: flags, cluster: config.cluster, senderID: config.me.preferredID?.rawValue ?? 0,
            incarnation: discovery.incarnation, messageID: messageID, origin: config.me.address)
    }

    private mutating func encode(_ body: Body) -> [UInt8]? {
        let m = Message(header: header(body.type), body: body)
        do {
            return try m.encode()
        } catch {
            out.append(.log(.error, "cannot encode \(body.type): \(error)"))
            return nil
        }
    }

    private mutating func apply(_ outputs: [DiscoveryOutput], now: UInt64) {
        for o in outputs {
            switch o {
            case .multicast(let b):
                if let bytes = encode(b) {
                    out.append(.multicast(bytes, except: nil))
                    counters.multicastSent += 1
                }
            case .unicast(let b, let to):
                if let bytes = encode(b) {
                    out.append(.unicast(bytes, to: to))
                    counters.unicastSent += 1
                }
            case .relay(let m, let except):
                if let bytes = try? m.encode() {
                    out.append(.multicast(bytes, except: except))
                    counters.multicastSent += 1
                }
            case .changes(let c):
                mapChanged(c, now: now)
            }
        }
    }

    private mutating func applyDetector(_ outputs: [DetectorOutput], now: UInt64) {
        for o in outputs {
            switch o {
            case .send(let b, let to, let port):
                if let bytes = encode(b) {
                    out.append(.heartbeat(bytes, to: to, port: port))
                    counters.heartbeatDatagramsSent += 1
                }
            case .multicast(let b):
                if let bytes = encode(b) {
                    out.append(.multicast(bytes, except: nil))
                    counters.multicastSent += 1
                }
            case .changes(let c):
                mapChanged(c, now: now, fromDetector: true)
            case .refute:
                apply(discovery.refute(now: now, map: &map), now: now)
            case .log(let l):
                let level: LogLevel =
                    switch l.level {
                    case .debug: .debug
                    case .info: .info
                    case .warning: .warning
                    }
                if config.logLevel <= level { out.append(.log(level, l.message)) }
            }
        }
    }

    private mutating func mapChanged(_ changes: [NodeMapChange], now: UInt64, fromDetector: Bool = false) {
        guard !changes.isEmpty else { return }
        counters.mapChanges += changes.count
        if config.logLevel <= .info {
            for c in changes { out.append(.log(c.level, c.logLine)) }
        }
        let ringChanged = changes.contains { c in
            switch c {
            case .updated: return false
            default: return true
            }
        }
        if ringChanged, detector != nil {
            applyDetector(detector!.mapChanged(map, now: now), now: now)
        }
    }
}

extension NodeMapChange {
    var level: LogLevel {
        switch self {
        case .stateChanged(_, _, _, let to, _): to == .dead || to == .suspect ? .notice : .info
        case .collision: .warning
        case .updated: .debug
        default: .info
        }
    }

    /// One log line per change, in the format the tests and benchmarks read.
    public var logLine: String {
        switch self {
        case .added(let n):
            return "member \(n.address) id=\(n.id) joined incarnation=\(n.incarnation) hops=\(n.hops)"
        case .removed(let n):
            return "member \(n.address) id=\(n.id) removed"
        case .stateChanged(let a, let id, let from, let to, let inc):
            return "member \(a) id=\(id) \(from) -> \(to) incarnation=\(inc)"
        case .updated(let n):
            return "member \(n.address) id=\(n.id) updated incarnation=\(n.incarnation) aliases=\(n.aliases.map { "\($0.address)" })"
        case .idChanged(let a, let from, let to):
            return "member \(a) id changed \(from) -> \(to)"
        case .collision(let id, let w, let l):
            return "id collision on \(id): \(w) keeps it, \(l) gets a substitute"
        }
    }
}
