import Cluster
import Detector
import Discovery
import NodeMap
import Testing
import Wire

/// An announce that repeats what the map holds of a member takes `ClusterNode`'s short path: the
/// map records the time heard and nothing else runs (`lastInputWasRepeat`). With debug events on,
/// a node takes the full path (discovery's receive, the map's `observe`) for every datagram. Fed
/// the same datagrams, the two nodes must end with the same map, discovery stats and counters, and
/// the short path must be taken exactly where an announce repeats a member's claim.
struct RepeatedAnnounceTests {
    static let me = IPAddress("10.0.0.1")!
    static let peer = IPAddress("10.0.0.2")!
    static let other = IPAddress("10.0.0.3")!
    static let ms: UInt64 = 1_000_000

    static func node(level: LogLevel) -> ClusterNode {
        let cfg = ClusterConfig(
            cluster: "test", me: SelfInfo(address: me, heartbeatPort: 7778), incarnation: 1,
            discovery: try! DiscoverySettings(baseInterval: 1_000_000_000, relay: false),
            detector: try! DetectorSettings(), seed: 1, logLevel: level)
        var n = ClusterNode(config: cfg, now: 0)
        _ = n.start(now: 0)
        return n
    }

    static func datagram(
        _ type: MessageType, from origin: IPAddress = peer, incarnation: UInt64, hops: UInt8 = 0,
        port: UInt16 = 7778, aliases: [Alias] = [], id: UInt32
    ) -> [UInt8] {
        let h = Header(
            type: type, hops: hops, cluster: "test", senderID: 0, incarnation: incarnation, messageID: id, origin: origin)
        let info = NodeInfo(aliases: aliases, heartbeatPort: port)
        let body: Body
        switch type {
        case .join: body = .join(info)
        case .leave: body = .leave
        default: body = .announce(info)
        }
        return try! Message(header: h, body: body).encode()
    }

    @Test func theShortPathChangesWhatTheFullPathChangesAndIsTakenOnlyForRepeats() {
        let alias = [Alias(IPAddress("192.168.7.2")!, source: .interface)]
        // (datagram, whether it repeats what the map holds of a member at that point)
        let inputs: [([UInt8], Bool)] = [
            (Self.datagram(.announce, incarnation: 1, id: 1), false),  // news: added
            (Self.datagram(.announce, incarnation: 1, id: 2), true),
            (Self.datagram(.announce, incarnation: 1, port: 7000, id: 3), false),  // another heartbeat port
            (Self.datagram(.announce, incarnation: 1, port: 7000, id: 4), true),
            (Self.datagram(.join, incarnation: 1, port: 7000, id: 5), false),  // a join is never a repeat
            (Self.datagram(.announce, incarnation: 2, port: 7000, id: 6), false),  // a new incarnation
            (Self.datagram(.announce, incarnation: 1, port: 7000, id: 7), false),  // an older life: dropped
            (Self.datagram(.announce, incarnation: 2, hops: 1, port: 7000, id: 8), false),  // one hop further
            (Self.datagram(.announce, incarnation: 2, hops: 1, port: 7000, id: 9), true),
            (Self.datagram(.leave, incarnation: 2, port: 7000, id: 10), false),
            (Self.datagram(.announce, incarnation: 2, hops: 1, port: 7000, id: 11), false),  // held left
            (Self.datagram(.announce, incarnation: 3, port: 7000, aliases: alias, id: 12), false),
            (Self.datagram(.announce, incarnation: 3, port: 7000, aliases: alias, id: 13), false),  // aliases: full path
            (Self.datagram(.announce, from: Self.other, incarnation: 1, id: 14), false),
            (Self.datagram(.announce, from: Self.other, incarnation: 1, id: 15), true),
            (Self.datagram(.announce, from: Self.me, incarnation: 1, id: 16), false),  // our own
        ]
        var short = Self.node(level: .warning)
        var full = Self.node(level: .debug)
        for (k, (bytes, repeats)) in inputs.enumerated() {
            let now = Instant(nanos: UInt64(k + 1) * 100 * Self.ms)
            let a = short.receive(bytes, interface: 0, now: now)
            let b = full.receive(bytes, interface: 0, now: now)
            #expect(short.lastInputWasRepeat == repeats, "input \(k)")
            #expect(!full.lastInputWasRepeat, "input \(k)")
            // The same datagrams out (the full path adds only its debug events).
            #expect(a.filter { !$0.isEvent }.count == b.filter { !$0.isEvent }.count, "input \(k)")
        }
        let byAddress = { (m: NodeMap) in m.nodes.sorted { $0.address < $1.address } }
        #expect(byAddress(short.map) == byAddress(full.map))
        #expect(short.discovery.stats == full.discovery.stats)
        #expect(short.counters == full.counters)
        // The repeats were heard: the time heard is the last announce's.
        #expect(short.map[Self.other]?.lastHeard == Instant(nanos: 15 * 100 * Self.ms))
        #expect(short.map[Self.peer]?.aliases == alias)
    }
}

/// `ClusterNode` keeps its own copies of `discovery.started` and `discovery.relaying` beside its hot
/// fields: they must follow discovery's.
struct DiscoveryFlagCopyTests {
    @Test func aRelayedCopySeenFirstMakesTheOriginalADuplicate() {
        var n = RepeatedAnnounceTests.node(level: .info)
        #expect(n.isRunning && !n.discovery.relaying)
        // A node that relays nothing has no seen-cache to consult for an original.
        _ = n.receive(RepeatedAnnounceTests.datagram(.announce, incarnation: 1, id: 1), interface: 0, now: 1)
        #expect(n.discovery.stats.duplicates == 0)
        // A copy through a relay, then its original (two paths): one message, processed once.
        _ = n.receive(RepeatedAnnounceTests.datagram(.announce, incarnation: 1, hops: 1, id: 2), interface: 0, now: 2)
        #expect(n.discovery.relaying)
        _ = n.receive(RepeatedAnnounceTests.datagram(.announce, incarnation: 1, id: 2), interface: 0, now: 3)
        #expect(n.discovery.stats.duplicates == 1)
    }

    @Test func aStoppedNodeTakesNoDatagram() {
        var n = RepeatedAnnounceTests.node(level: .info)
        _ = n.stop(now: 1)
        #expect(!n.isRunning && !n.discovery.started)
        let before = n.counters.datagramsReceived
        _ = n.receive(RepeatedAnnounceTests.datagram(.announce, incarnation: 1, id: 1), interface: 0, now: 2)
        #expect(n.counters.datagramsReceived == before)
        #expect(n.map[RepeatedAnnounceTests.peer] == nil)
    }
}

extension Effect {
    fileprivate var isEvent: Bool {
        if case .event = self { return true }
        return false
    }
}

/// The hot fields stay a few lines of the node: a reordering that pushed them behind `config` or
/// the detector's cold fields would make every announce and join read lines the simulator no
/// longer asks for.
struct HotFieldTests {
    @Test func aRepeatedAnnouncesFieldsAreAFewLinesOfTheNode() {
        // At most four 64-byte lines wherever the node lies (its slot's 16-byte header first).
        #expect(16 + ClusterNode.repeatBytes <= 192)
        #expect(ClusterNode.repeatBytes * 8 < MemoryLayout<ClusterNode>.size)
    }

    @Test func aMapChangesFieldsAreUnderHalfTheNode() {
        let (a, b) = ClusterNode.changeRanges
        let config = MemoryLayout<ClusterNode>.offset(of: \ClusterNode.config)!
        #expect(a.lowerBound == 0 && a.upperBound <= b.lowerBound && b.upperBound <= config)
        #expect((a.count + b.count) * 2 < MemoryLayout<ClusterNode>.size)
        // What a repeat reads is part of what a change reads.
        #expect(ClusterNode.repeatBytes <= a.upperBound)
    }
}
