import Auth
import Cluster
import Detector
import Discovery
import NodeMap
import Testing
import Wire

/// A tiny instant network of ClusterNodes: every node has interfaces attached to LANs; a multicast
/// reaches every other node with an interface on the same LAN. Deliveries are FIFO and counted.
struct TestNet {
    var nodes: [ClusterNode] = []
    /// lans[n][i] = LAN of node n's interface i
    var lans: [[Int]] = []
    var now = Instant(nanos: 1_000_000_000)
    var deliveries = 0
    var deliveriesPerLAN: [Int: Int] = [:]
    var down: Set<Int> = []
    var queue: [(from: Int, effect: Effect)] = []
    /// Nodes that lose every multicast (unicasts still reach them).
    var deafToMulticast: Set<Int> = []
    /// Events the nodes produced, in order, when `recordEvents` is set.
    var recordEvents = false
    var events: [(node: Int, event: ClusterEvent)] = []
    /// Every datagram sent, by sender, when `recordDatagrams` is set (what an eavesdropper captures).
    var recordDatagrams = false
    var datagrams: [(from: Int, bytes: [UInt8])] = []

    static func address(_ s: String) -> IPAddress { IPAddress(s)! }

    mutating func add(
        _ addr: String, lans l: [Int] = [0], aliases: [String] = [], detector: Bool = false, incarnation: UInt64 = 1,
        auth: AuthConfig? = nil
    ) -> Int {
        let me = SelfInfo(
            address: Self.address(addr), aliases: aliases.map { Alias(Self.address($0), source: .interface) },
            heartbeatPort: 7778)
        // The test network's own timing: 1 s announces (the daemon's default is 3 s).
        let settings = try! DiscoverySettings(baseInterval: 1_000_000_000, relay: l.count > 1)
        var cfg = ClusterConfig(
            cluster: "test", me: me, incarnation: incarnation, discovery: settings,
            detector: detector ? try! DetectorSettings() : nil, seed: UInt64(nodes.count + 1), logLevel: .error)
        cfg.auth = auth
        nodes.append(ClusterNode(config: cfg, now: now))
        lans.append(l)
        return nodes.count - 1
    }

    mutating func start(_ n: Int) {
        let e = nodes[n].start(now: now)
        queue += e.map { (n, $0) }
        run()
    }

    mutating func stop(_ n: Int) {
        let e = nodes[n].stop(now: now)
        queue += e.map { (n, $0) }
        run()
        down.insert(n)
    }

    /// The running node with address `a` (a restarted node replaces its old, stopped self).
    mutating func index(of a: IPAddress) -> Int? { nodes.indices.last { nodes[$0].address == a && !down.contains($0) } ?? nodes.firstIndex { $0.address == a } }

    /// Delivers everything queued (and what that causes), at most `limit` datagrams.
    mutating func run(limit: Int = 1_000_000) {
        var count = 0
        while !queue.isEmpty && count < limit {
            let (from, e) = queue.removeFirst()
            if recordDatagrams {
                switch e {
                case .multicast(let b, _), .unicast(let b, _), .heartbeat(let b, _, _): datagrams.append((from, b))
                case .event: break
                }
            }
            switch e {
            case .multicast(let bytes, let except):
                for (i, lan) in lans[from].enumerated() where i != except {
                    for m in nodes.indices where m != from && !down.contains(m) && !deafToMulticast.contains(m) {
                        for (k, l) in lans[m].enumerated() where l == lan {
                            deliver(bytes, to: m, interface: k, lan: lan)
                            count += 1
                        }
                    }
                }
            case .unicast(let bytes, let to), .heartbeat(let bytes, let to, _):
                if let m = index(of: to), !down.contains(m) {
                    deliver(bytes, to: m, interface: 0, lan: -1)
                    count += 1
                }
            case .event(let e):
                if recordEvents { events.append((from, e)) }
            }
        }
    }

    /// A datagram from outside the cluster's nodes (a forger) reaches node `m`; what it answers runs.
    mutating func inject(_ bytes: [UInt8], to m: Int) {
        deliver(bytes, to: m, interface: 0, lan: -1)
        run()
    }

    private mutating func deliver(_ bytes: [UInt8], to m: Int, interface: Int, lan: Int) {
        deliveries += 1
        deliveriesPerLAN[lan, default: 0] += 1
        let e = nodes[m].receive(bytes, interface: interface, now: now)
        queue += e.map { (m, $0) }
    }

    /// Advances time in steps, ticking every running node.
    mutating func advance(by span: TimeSpan, step: TimeSpan = .milliseconds(50)) {
        let end = now + span
        while now < end {
            now = min(end, now + step)
            for n in nodes.indices where !down.contains(n) {
                let e = nodes[n].tick(now: now)
                queue += e.map { (n, $0) }
            }
            run()
        }
    }

    func members(of n: Int) -> Set<IPAddress> {
        Set(nodes[n].map.nodes.filter { $0.state.isMember }.map(\.address))
    }
}

@Suite struct DiscoveryTests {
    @Test func announceIntervalStretchesWithClusterSize() throws {
        let d = DiscoveryCore(
            settings: try DiscoverySettings(baseInterval: 1_000_000_000), me: SelfInfo(address: IPAddress("10.0.0.1")!),
            incarnation: 1, seed: 1)
        #expect(DiscoverySettings.default.baseInterval == 3_000_000_000)  // the daemon's default
        #expect(d.interval(members: 10) == 1_000_000_000)
        #expect(d.interval(members: 100) == 1_000_000_000)
        // 1,000 nodes: each every 10 s, so the whole cluster sends 100 announces/s, not 1,000.
        let i1000 = d.interval(members: 1000)
        #expect(i1000 == 10_000_000_000)
        let aggregate = 1000.0 / (Double(i1000.nanos) / 1e9)
        #expect(aggregate <= 100.0001)
        let i10k = d.interval(members: 10_000)
        #expect(10_000.0 / (Double(i10k.nanos) / 1e9) <= 100.0001)
    }

    @Test func settingsAreValidated() {
        #expect(throws: DiscoverySettings.Invalid.self) { try DiscoverySettings(baseInterval: 1_000) }
        #expect(throws: DiscoverySettings.Invalid.self) { try DiscoverySettings(aggregateRate: 0) }
        #expect(throws: DiscoverySettings.Invalid.self) { try DiscoverySettings(expiryFactor: 1) }
    }

    @Test func newcomerConvergesInOneRoundTripWithoutWaitingForAnnounces() {
        var net = TestNet()
        for i in 1...20 { _ = net.add("10.0.0.\(i)") }
        for i in 0..<20 { net.start(i) }
        // Joins and their answers alone (no time passes, so no announce is sent).
        for i in 0..<20 { #expect(net.members(of: i).count == 20, "node \(i) knows \(net.members(of: i).count)") }
        let newcomer = net.add("10.0.0.99")
        let before = net.deliveries
        net.start(newcomer)
        #expect(net.members(of: newcomer).count == 21)
        for i in 0..<20 { #expect(net.members(of: i).contains(IPAddress("10.0.0.99")!)) }
        // One multicast join (20 receivers) plus a couple of map-sync answers, not 20.
        let used = net.deliveries - before
        #expect(used <= 20 + 4, "join cost \(used) deliveries")
        #expect(net.nodes[newcomer].counters.drops.isEmpty)
    }

    @Test func leaveRemovesNodeAtOnce() {
        var net = TestNet()
        for i in 1...5 { _ = net.add("10.0.0.\(i)") }
        for i in 0..<5 { net.start(i) }
        net.stop(2)
        let gone = IPAddress("10.0.0.3")!
        for i in [0, 1, 3, 4] {
            #expect(net.nodes[i].map[gone]?.state == .left)
            #expect(!net.members(of: i).contains(gone))
        }
    }

    @Test func restartWithHigherIncarnationRejoinsAfterLeave() {
        var net = TestNet()
        for i in 1...3 { _ = net.add("10.0.0.\(i)") }
        for i in 0..<3 { net.start(i) }
        net.stop(1)
        #expect(net.nodes[0].map[IPAddress("10.0.0.2")!]?.state == .left)
        let again = net.add("10.0.0.2", incarnation: 2)
        net.start(again)
        #expect(net.nodes[0].map[IPAddress("10.0.0.2")!]?.state == .alive)
        #expect(net.nodes[0].map[IPAddress("10.0.0.2")!]?.incarnation == 2)
        #expect(net.nodes[0].map[IPAddress("10.0.0.2")!]?.id == NodeID(2))
    }

    @Test func silentNodeExpiresWithoutDetector() {
        var net = TestNet()
        for i in 1...3 { _ = net.add("10.0.0.\(i)") }
        for i in 0..<3 { net.start(i) }
        net.down.insert(2)  // crash: no leave
        net.advance(by: 2_000_000_000)
        #expect(net.nodes[0].map[IPAddress("10.0.0.3")!]?.state == .alive)
        net.advance(by: 4_000_000_000)  // 3.5 intervals of 1 s, scanned every second
        #expect(net.nodes[0].map[IPAddress("10.0.0.3")!]?.state == .dead)
        #expect(net.nodes[1].map[IPAddress("10.0.0.3")!]?.state == .dead)
    }

    @Test func liveNodeHeldDeadIsToldAndRevivedEverywhere() {
        var net = TestNet()
        for i in 1...3 { _ = net.add("10.0.0.\(i)") }
        for i in 0..<3 { net.start(i) }
        let b = IPAddress("10.0.0.2")!
        let inc = net.nodes[1].incarnation
        // b's messages are lost long enough for the others to expire it, then get through again.
        net.down.insert(1)
        net.advance(by: 5_000_000_000)
        #expect(net.nodes[0].map[b]?.state == .dead)
        #expect(net.nodes[2].map[b]?.state == .dead)
        net.down.remove(1)
        net.advance(by: 3_000_000_000)
        // Its next announce is answered with `suspect`; it refutes with a higher incarnation.
        #expect(net.nodes[1].incarnation > inc)
        #expect(net.nodes[0].map[b]?.state == .alive)
        #expect(net.nodes[2].map[b]?.state == .alive)
        #expect(net.nodes[0].discovery.stats.revivalsRequested >= 1)
    }

    /// LAN 0: a1, a2; LAN 1: b1, b2; gateways g1 and g2 on both.
    private func twoGatewayNet() -> TestNet {
        var net = TestNet()
        _ = net.add("10.1.0.1", lans: [0])
        _ = net.add("10.1.0.2", lans: [0])
        _ = net.add("10.2.0.1", lans: [1])
        _ = net.add("10.2.0.2", lans: [1])
        _ = net.add("10.1.0.254", lans: [0, 1], aliases: ["10.2.0.254"])
        _ = net.add("10.1.0.253", lans: [0, 1], aliases: ["10.2.0.253"])
        return net
    }

    @Test func gatewaysRelayBetweenNetworksWithoutLoops() {
        var net = twoGatewayNet()
        for i in 0..<6 { net.start(i) }
        net.advance(by: 3_000_000_000)
        for i in 0..<6 { #expect(net.members(of: i).count == 6, "node \(i): \(net.members(of: i))") }
        // b1 lists a1 one hop away and the gateway with its other address as an alias.
        let a1 = net.nodes[2].map[IPAddress("10.1.0.1")!]
        #expect(a1?.hops == 1)
        let g1 = net.nodes[2].map[IPAddress("10.1.0.254")!]
        #expect(g1?.aliases.contains(Alias(IPAddress("10.2.0.254")!, source: .interface)) == true)

        // One announce from a1 now: exactly one copy per gateway reaches LAN 1, nothing comes back.
        let before = net.deliveriesPerLAN
        var d = net.nodes[0]
        let msg = Message(
            header: Header(type: .announce, cluster: "test", senderID: 1, incarnation: d.incarnation, messageID: 999_999, origin: d.address),
            body: .announce(NodeInfo(heartbeatPort: 7778)))
        net.queue.append((0, .multicast(try! msg.encode(), except: nil)))
        _ = d
        d = net.nodes[0]
        net.run()
        let lan0 = (net.deliveriesPerLAN[0] ?? 0) - (before[0] ?? 0)
        let lan1 = (net.deliveriesPerLAN[1] ?? 0) - (before[1] ?? 0)
        // LAN 0: the original reaches a2, g1, g2 (3); g1's and g2's copies on LAN 1 reach b1, b2 and the other gateway (2 × 3).
        #expect(lan0 == 3, "LAN 0 deliveries \(lan0)")
        #expect(lan1 == 6, "LAN 1 deliveries \(lan1)")
        let dupes = net.nodes.map { $0.discovery.stats.duplicates }.reduce(0, +)
        #expect(dupes >= 2)
    }

    @Test func malformedDatagramsAreCountedDrops() {
        var net = TestNet()
        let n = net.add("10.0.0.1")
        net.start(n)
        _ = net.nodes[n].receive([1, 2, 3], interface: 0, now: net.now)
        var good = Message(
            header: Header(type: .announce, cluster: "test", senderID: 2, incarnation: 1, messageID: 1, origin: IPAddress("10.0.0.2")!),
            body: .announce(NodeInfo()))
        var bytes = try! good.encode()
        bytes[2] = 9  // version
        _ = net.nodes[n].receive(bytes, interface: 0, now: net.now)
        good.header.cluster = "other"
        _ = net.nodes[n].receive(try! good.encode(), interface: 0, now: net.now)
        let drops = net.nodes[n].counters.drops
        #expect(drops[.tooShort] == 1)
        #expect(drops[.badVersion] == 1)
        #expect(drops[.otherCluster] == 1)
        #expect(net.nodes[n].map.count == 1)
    }

    @Test func staleAnnounceOfLowerIncarnationIsIgnored() {
        var net = TestNet()
        let a = net.add("10.0.0.1")
        net.start(a)
        func announce(_ inc: UInt64, alias: String) -> [UInt8] {
            try! Message(
                header: Header(type: .announce, cluster: "test", senderID: 2, incarnation: inc, messageID: UInt32(inc), origin: IPAddress("10.0.0.2")!),
                body: .announce(NodeInfo(aliases: [Alias(IPAddress(alias)!, source: .interface)]))).encode()
        }
        _ = net.nodes[a].receive(announce(5, alias: "10.5.0.2"), interface: 0, now: net.now)
        _ = net.nodes[a].receive(announce(4, alias: "10.4.0.2"), interface: 0, now: net.now)
        let n = net.nodes[a].map[IPAddress("10.0.0.2")!]
        #expect(n?.incarnation == 5)
        #expect(n?.aliases.first?.address == IPAddress("10.5.0.2")!)
    }

    @Test func mapSyncSplitsLargeMapsIntoDatagrams() throws {
        var map = NodeMap()
        for i in 1...300 { map.observe(NodeClaim(address: IPAddress(v4: 0x0A00_0000 | UInt32(i))), now: 1) }
        let d = DiscoveryCore(me: SelfInfo(address: IPAddress("10.0.0.1")!), incarnation: 1, seed: 1)
        let parts = d.mapSync(map, now: 0)
        #expect(parts.count > 1)
        var total = 0
        for p in parts {
            let m = Message(header: Header(type: .mapSync, cluster: String(repeating: "c", count: 32), senderID: 1, incarnation: 1, messageID: 1, origin: IPAddress("10.0.0.1")!), body: p)
            let bytes = try m.encode()
            #expect(bytes.count <= Wire.maxDatagram)
            if case .mapSync(_, _, let e) = p { total += e.count }
        }
        #expect(total == 300)
    }

    @Test func collidingNodesGetDistinctIDsEverywhere() {
        var net = TestNet()
        _ = net.add("10.1.5.7")
        _ = net.add("10.2.5.7")
        _ = net.add("10.3.0.1")
        for i in 0..<3 { net.start(i) }
        let views = (0..<3).map { n in net.nodes[n].map.nodes.map { "\($0.address)=\($0.id)" }.sorted() }
        #expect(views[0] == views[1] && views[1] == views[2])
        let ids = net.nodes[0].map.nodes.map(\.id)
        #expect(Set(ids).count == 3)
        #expect(net.nodes[0].map[IPAddress("10.1.5.7")!]?.id == NodeID(1287))
        #expect(net.nodes[0].map[IPAddress("10.2.5.7")!]?.id != NodeID(1287))
    }
}
