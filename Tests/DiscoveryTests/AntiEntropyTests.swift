import Cluster
import Detector
import Discovery
import NodeMap
import Testing
import Wire

/// Anti-entropy (digests on heartbeats, syncs between ring neighbours), bounded joins and the
/// re-announce wave (docs/PROTOCOL.md "Anti-entropy").
@Suite struct AntiEntropyTests {
    func settled(_ n: Int, detector: Bool = true) -> TestNet {
        var net = TestNet()
        for i in 1...n { _ = net.add("10.0.0.\(i)", detector: detector) }
        for i in 0..<n { net.start(i) }
        net.advance(by: .seconds(3))
        for i in 0..<n { #expect(net.members(of: i).count == n) }
        return net
    }

    func sent(_ net: TestNet, _ i: Int) -> Int { net.nodes[i].counters.multicastSent + net.nodes[i].counters.unicastSent }

    /// A node that loses every multicast still learns a join, a leave and a death from its ring
    /// neighbours' digests, long before any announce could tell it.
    @Test func lostMulticastsAreRepairedByTheRingDigest() {
        var net = settled(10)
        let deaf = 3
        net.deafToMulticast = [deaf]
        let syncsBefore = net.nodes[deaf].discovery.stats.syncRequestsSent
        // A join it does not hear.
        let x = net.add("10.0.0.50", detector: true)
        net.start(x)
        net.advance(by: .milliseconds(900), step: .milliseconds(10))
        #expect(net.members(of: deaf).contains(IPAddress("10.0.0.50")!), "the lost join was not repaired")
        // A leave it does not hear.
        let leaver = 7
        net.stop(leaver)
        net.advance(by: .milliseconds(900), step: .milliseconds(10))
        #expect(net.nodes[deaf].map[IPAddress("10.0.0.8")!]?.state == .left, "the lost leave was not repaired")
        #expect(net.nodes[deaf].discovery.stats.syncRequestsSent > syncsBefore)
        // Every map holds the same members again.
        for i in net.nodes.indices where !net.down.contains(i) {
            #expect(net.members(of: i) == net.members(of: 0), "node \(i)")
        }
    }

    /// The digest follows the map: equal maps agree, so a settled cluster sends no syncs.
    @Test func settledClusterSendsNoSyncs() {
        var net = settled(12)
        let before = net.nodes.map { $0.discovery.stats.syncRequestsSent }
        net.advance(by: .seconds(2), step: .milliseconds(10))
        #expect(net.nodes.map { $0.discovery.stats.syncRequestsSent } == before)
        #expect(Set(net.nodes.map { $0.map.digest }).count == 1)
    }

    /// A newcomer in a settled cluster is offered the map by its ring neighbours (small datagrams)
    /// and pulls it from one of them only.
    @Test func newcomerPullsFromOneOfferer() {
        var net = settled(30, detector: false)
        let newcomer = net.add("10.0.0.99")
        let before = net.nodes.map { $0.discovery.stats }
        net.start(newcomer)
        #expect(net.members(of: newcomer).count == 31)
        let offers = net.nodes.indices.dropLast().map { net.nodes[$0].discovery.stats.offersSent - before[$0].offersSent }.reduce(0, +)
        let answers = net.nodes.indices.dropLast().map {
            net.nodes[$0].discovery.stats.syncRequestsAnswered - before[$0].syncRequestsAnswered
        }
        #expect(offers >= 1 && offers <= 2, "offers \(offers)")
        #expect(answers.filter { $0 > 0 }.count == 1, "the newcomer pulled from \(answers.filter { $0 > 0 }.count) nodes")
        #expect(net.nodes[newcomer].discovery.stats.pulls == 1)
        #expect(net.nodes.indices.dropLast().allSatisfy { net.nodes[$0].discovery.stats.syncsSent == before[$0].syncsSent })
    }

    /// Forty nodes starting at the same instant: an influx. Nobody sends its map to anybody; every
    /// node announces `waveCopies` times once the joins stop, and every map is complete.
    @Test func restartStormIsAWaveNotAnswers() {
        var net = TestNet()
        let n = 40
        for i in 1...n { _ = net.add("10.0.0.\(i)", detector: true) }
        for i in 0..<n { net.start(i) }
        net.advance(by: .seconds(3), step: .milliseconds(10))
        for i in 0..<n { #expect(net.members(of: i).count == n, "node \(i) holds \(net.members(of: i).count)") }
        let waves = net.nodes.map { $0.discovery.stats.waveAnnounces }
        #expect(waves.filter { $0 == DiscoverySettings.default.waveCopies }.count >= n - 9, "wave announces per node: \(waves)")
        // Only the joins a node hears before it sees the influx may be answered (each with one small
        // datagram), and a newcomer pulls at most once.
        let j = DiscoverySettings.default.influxMinJoins
        for i in 0..<n {
            let s = net.nodes[i].discovery.stats
            #expect(s.offersSent + s.syncsSent <= j, "node \(i): \(s.offersSent) offers, \(s.syncsSent) full answers")
            #expect(s.pulls <= 1)
        }
        for i in 0..<n { #expect(sent(net, i) <= 20, "node \(i) sent \(sent(net, i)) datagrams beyond heartbeats") }
    }

    // MARK: The core alone

    func core(_ a: String = "10.0.0.1") -> (DiscoveryCore, NodeMap) {
        var d = DiscoveryCore(me: SelfInfo(address: IPAddress(a)!), incarnation: 5, seed: 1, detectorRunning: true)
        var map = NodeMap()
        _ = d.start(now: Instant(nanos: 1_000_000_000), map: &map)
        for i in 2...6 { map.observe(NodeClaim(address: IPAddress("10.0.0.\(i)")!, incarnation: 1), now: Instant(nanos: 1_000_000_000)) }
        return (d, map)
    }

    func request(_ out: [DiscoveryOutput]) -> (SyncRequest, IPAddress)? {
        for o in out { if case .unicast(.syncRequest(let r), let to) = o { return (r, to) } }
        return nil
    }

    func message(_ body: Body, from: String) -> Message {
        Message(header: Header(type: body.type, cluster: "test", senderID: 0, incarnation: 1, messageID: 1, origin: IPAddress(from)!), body: body)
    }

    /// One differing heartbeat is not enough (a change may be in flight); the second one starts a
    /// sync, and a third while it runs does not start another.
    @Test func syncStartsOnTheSecondDifferingHeartbeatOnly() {
        var (d, map) = core()
        let peer = IPAddress("10.0.0.2")!
        let t = Instant(nanos: 2_000_000_000)
        #expect(request(d.heardDigest(from: peer, members: 9, digest: 42, now: t, map: map)) == nil)
        let r = request(d.heardDigest(from: peer, members: 9, digest: 42, now: t + .milliseconds(150), map: map))
        #expect(r?.1 == peer)
        #expect(r?.0.sums == map.saltedBucketSums(salt: r!.0.salt))
        #expect(request(d.heardDigest(from: peer, members: 9, digest: 42, now: t + .milliseconds(300), map: map)) == nil)
        // Equal digests never start one.
        var (e, m2) = core()
        #expect(request(e.heardDigest(from: peer, members: 6, digest: m2.digest, now: t, map: m2)) == nil)
        #expect(request(e.heardDigest(from: peer, members: 6, digest: m2.digest, now: t + .milliseconds(150), map: m2)) == nil)
        _ = m2.count
    }

    /// Merging an answer: a node we lack is taken unless its entry is older than a tombstone lives
    /// (the others may have purged it); a death at our incarnation is taken; a stale one is not; an
    /// entry that holds us dead makes us refute; an answer of no session of ours is ignored.
    @Test func mergeRules() {
        var (d, map) = core()
        let peer = IPAddress("10.0.0.2")!
        let t = Instant(nanos: 2_000_000_000)
        _ = d.heardDigest(from: peer, members: 9, digest: 42, now: t, map: map)
        let (r, _) = request(d.heardDigest(from: peer, members: 9, digest: 42, now: t + .milliseconds(150), map: map))!
        let old = UInt32(d.tombstoneLifetime(map).nanos / 1_000_000 + 1)
        func entry(_ a: String, _ s: NodeState, _ inc: UInt64, age: UInt32 = 10) -> SyncEntry {
            SyncEntry(address: IPAddress(a)!, preferredID: 0, explicitID: false, state: s, incarnation: inc, heartbeatPort: 1, aliases: [], ageMillis: age)
        }
        let entries = [
            entry("10.0.0.20", .alive, 1),
            entry("10.0.0.21", .alive, 1, age: old),
            entry("10.0.0.3", .dead, 1),
            entry("10.0.0.4", .dead, 0),
            entry("10.0.0.1", .dead, 5),
        ]
        let bogus = message(.syncEntries(SyncEntries(session: r.session &+ 1, flags: [.reply, .last], covered: [], entries: entries)), from: "10.0.0.2")
        _ = d.receive(bogus, now: t + .milliseconds(160), map: &map)
        #expect(map[IPAddress("10.0.0.20")!] == nil)
        #expect(d.stats.syncUnsolicited == 1)
        let reply = message(.syncEntries(SyncEntries(session: r.session, flags: [.reply, .last], covered: [], entries: entries)), from: "10.0.0.2")
        let out = d.receive(reply, now: t + .milliseconds(170), map: &map)
        #expect(map[IPAddress("10.0.0.20")!]?.state == .alive)
        #expect(map[IPAddress("10.0.0.21")!] == nil)
        #expect(map[IPAddress("10.0.0.3")!]?.state == .dead)
        #expect(map[IPAddress("10.0.0.4")!]?.state == .alive)
        #expect(out.contains(.refute(accusedAs: .dead, by: peer, past: 5)))
    }

    /// A request from a node that is not a member is not answered (an answer is many times a
    /// request's size: no amplifier for forged source addresses); a member's is, within the
    /// answer budget.
    @Test func onlyMembersAreAnsweredWithinTheBudget() {
        var (d, map) = core()
        let sums = [UInt8](repeating: 0, count: NodeMap.digestBuckets)
        let stranger = message(.syncRequest(SyncRequest(session: 1, salt: 1, sums: sums)), from: "192.0.2.9")
        #expect(d.receive(stranger, now: Instant(nanos: 2_000_000_000), map: &map).isEmpty)
        var answered = 0
        for k in 0..<100 {
            let m = message(.syncRequest(SyncRequest(session: UInt32(k), salt: UInt32(k), sums: sums)), from: "10.0.0.2")
            let out = d.receive(m, now: Instant(nanos: 2_000_000_000), map: &map)
            if out.contains(where: { if case .unicast(.syncEntries, _) = $0 { true } else { false } }) { answered += 1 }
        }
        #expect(answered == Int(DiscoverySettings.default.syncAnswerRate))
        #expect(d.stats.syncRequestsRefused == 100 - answered)
    }

    /// An answer covers whole buckets, never exceeds a datagram, and stops at its bound with `more`.
    @Test func answerIsBoundedAndCoversWholeBuckets() throws {
        var d = DiscoveryCore(me: SelfInfo(address: IPAddress("10.9.0.1")!), incarnation: 5, seed: 1, detectorRunning: true)
        var map = NodeMap()
        _ = d.start(now: Instant(nanos: 1_000_000_000), map: &map)
        for i in 0..<3000 {
            map.observe(NodeClaim(address: IPAddress("10.1.\(i / 250).\(i % 250 + 1)")!, incarnation: 1), now: Instant(nanos: 1_000_000_000))
        }
        let empty = NodeMap().saltedBucketSums(salt: 7)
        let m = message(.syncRequest(SyncRequest(session: 3, salt: 7, flags: .pull, sums: empty)), from: "10.1.0.1")
        let out = d.receive(m, now: Instant(nanos: 2_000_000_000), map: &map)
        var bodies: [SyncEntries] = []
        for o in out { if case .unicast(.syncEntries(let e), _) = o { bodies.append(e) } }
        #expect(bodies.count == DiscoverySettings.default.syncReplyDatagrams)
        #expect(bodies.last!.flags.contains([.last, .more]))
        var seen = Set<IPAddress>()
        for b in bodies {
            let bytes = try Message(header: Header(type: .syncEntries, flags: .authenticated, cluster: String(repeating: "c", count: 32), senderID: 0, incarnation: 1, messageID: 1, origin: IPAddress("10.9.0.1")!), body: .syncEntries(b)).encode()
            #expect(bytes.count <= Wire.maxDatagram)
            for e in b.entries { seen.insert(e.address) }
            // Every node of a covered bucket is in the datagram that covers it.
            let covered = Set(b.covered.map(Int.init))
            let inBuckets = map.nodes(inBuckets: { covered.contains($0) }).map(\.address)
            #expect(Set(inBuckets).isSubset(of: Set(b.entries.map(\.address))))
        }
        #expect(seen.count > 400)
    }

    func offer(members: UInt16, from: String) -> Message { message(.offer(members: members, digest: 0xBAD), from: from) }

    /// A newcomer pulls from the first offerer, and switches only to an offer of more than twice
    /// as many members (the first came from a node that had just restarted too): each switch
    /// doubles, so the pulls per newcomer are bounded however many offers come.
    @Test func newcomerSwitchesOnlyToAMuchLargerOffer() {
        var (d, map) = core()
        let t = Instant(nanos: 2_000_000_000)
        #expect(request(d.receive(offer(members: 6, from: "10.0.0.2"), now: t, map: &map))?.1 == IPAddress("10.0.0.2"))
        // Another offer of about the same map, or the same offerer again: nothing.
        #expect(request(d.receive(offer(members: 12, from: "10.0.0.3"), now: t + .milliseconds(1), map: &map)) == nil)
        #expect(request(d.receive(offer(members: 900, from: "10.0.0.2"), now: t + .milliseconds(1), map: &map)) == nil)
        // A real map: switch at once, without waiting for the first session to time out.
        let r = request(d.receive(offer(members: 900, from: "10.0.0.4"), now: t + .milliseconds(2), map: &map))
        #expect(r?.1 == IPAddress("10.0.0.4"))
        #expect(r?.0.flags.contains(.pull) == true)
        #expect(request(d.receive(offer(members: 1500, from: "10.0.0.5"), now: t + .milliseconds(3), map: &map)) == nil)
        #expect(d.stats.pulls == 2)
        // However many offers, each doubling: at most 17 pulls (16-bit member counts).
        var m = 1800
        var k = 10
        while m <= Int(UInt16.max) {
            _ = d.receive(offer(members: UInt16(m), from: "10.0.1.\(k)"), now: t + .milliseconds(4), map: &map)
            m = m * 2 + 1
            k += 1
        }
        #expect(d.stats.pulls <= 17)
    }

    /// A page of a pull whose request or last datagram was lost is asked again after `pullRetry`,
    /// not after the heartbeat sync's timeout; the last page ends the pull; so does `pullLimit`.
    @Test func pullPagesAreAskedAgainUntilTheLastOne() {
        let s = DiscoverySettings.default
        var (d, map) = core()
        let t = Instant(nanos: 2_000_000_000)
        let peer = IPAddress("10.0.0.2")!
        let first = request(d.receive(offer(members: 40, from: "10.0.0.2"), now: t, map: &map))!
        #expect(d.nextDeadline <= t + s.pullRetry)
        #expect(request(d.tick(now: t + s.pullRetry - .milliseconds(1), map: &map)) == nil)
        let again = request(d.tick(now: t + s.pullRetry, map: &map))
        #expect(again?.1 == peer)
        #expect(again?.0.session != first.0.session)
        #expect(again?.0.flags.contains(.pull) == true)
        // The answer's last page, without `more`: the pull is over, no more requests.
        let last = message(.syncEntries(SyncEntries(session: again!.0.session, flags: [.reply, .last], covered: [], entries: [])), from: "10.0.0.2")
        _ = d.receive(last, now: t + s.pullRetry + .milliseconds(1), map: &map)
        for k in 2...10 { #expect(request(d.tick(now: t + s.pullRetry * UInt64(k), map: &map)) == nil) }
        #expect(d.nextDeadline > t + s.pullRetry * 10)

        // An offerer that never answers (it crashed): asked `pullMisses` times more, every
        // `pullRetry`; then the pull is over and heartbeat syncs may start again.
        var (e, m2) = core()
        _ = e.receive(offer(members: 40, from: "10.0.0.2"), now: t, map: &m2)
        var asked = 1
        var now = t
        while now < t + .seconds(3) {
            now = max(now + .milliseconds(1), e.nextDeadline)
            if request(e.tick(now: now, map: &m2)) != nil { asked += 1 }
        }
        #expect(asked == 1 + s.pullMisses, "asked \(asked) times")
        #expect(e.nextDeadline > now)
        _ = e.heardDigest(from: peer, members: 40, digest: 42, now: now, map: m2)
        #expect(request(e.heardDigest(from: peer, members: 40, digest: 42, now: now + .milliseconds(150), map: m2)) != nil)

        // One that answers every page but slowly, never the last: asked until `pullLimit`.
        var (f, m3) = core()
        let firstF = request(f.receive(offer(members: 40, from: "10.0.0.2"), now: t, map: &m3))!
        var session = firstF.0.session
        var askedF = 1
        now = t
        while now < t + s.pullLimit + .seconds(2) {
            let part = message(.syncEntries(SyncEntries(session: session, flags: [.reply], covered: [], entries: [])), from: "10.0.0.2")
            _ = f.receive(part, now: now + .milliseconds(1), map: &m3)
            now = max(now + .milliseconds(2), f.nextDeadline)
            if let r = request(f.tick(now: now, map: &m3)) {
                askedF += 1
                session = r.0.session
            }
        }
        let most = Int(s.pullLimit.nanos / s.pullRetry.nanos) + 1
        #expect(askedF >= most - 1 && askedF <= most, "asked \(askedF) times")
    }

    /// A node whose own pull is under way offers nobody (it has little to give), and announces of
    /// nodes it lacks make no heal wave there (its map is incomplete, not healed).
    @Test func aPullingNodeNeitherOffersNorWaves() {
        var (d, map) = core()
        let t = Instant(nanos: 2_000_000_000)
        _ = d.receive(offer(members: 40, from: "10.0.0.2"), now: t, map: &map)
        // 10.0.0.7 joins next to us on the ring (IDs 1..7): a settled node would offer.
        let join = Message(
            header: Header(type: .join, cluster: "test", senderID: 0, incarnation: 1, messageID: 1, origin: IPAddress("10.0.0.7")!),
            body: .join(NodeInfo(aliases: [], heartbeatPort: 0, announceIntervalMillis: 3000, capabilities: [])))
        let out = d.receive(join, now: t + .milliseconds(1), map: &map)
        #expect(!out.contains { if case .unicast(.offer, _) = $0 { true } else { false } })
        #expect(d.stats.offersSent == 0)
        for i in 0..<40 {
            let a = Message(
                header: Header(type: .announce, cluster: "test", senderID: 0, incarnation: 1, messageID: 1, origin: IPAddress("10.0.2.\(i + 1)")!),
                body: .announce(NodeInfo(aliases: [], heartbeatPort: 0, announceIntervalMillis: 3000, capabilities: [])))
            _ = d.receive(a, now: t + .milliseconds(2 + UInt64(i)), map: &map)
        }
        #expect(d.stats.healWaves == 0)

        // The same join at a settled node (no pull) is offered.
        var (e, m2) = core()
        let o = e.receive(join, now: t, map: &m2)
        #expect(o.contains { if case .unicast(.offer, _) = $0 { true } else { false } })
    }
}
