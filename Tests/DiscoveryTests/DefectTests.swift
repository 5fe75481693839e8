import Cluster
import Detector
import Discovery
import NodeMap
import Testing
import Wire

/// Regression tests for defects of the first wave (issue 8), each failing before its fix.
@Suite struct DefectRegressionTests {
    static let ms = TimeSpan.milliseconds(1)

    func forged(_ body: Body, origin: IPAddress, incarnation: UInt64) -> [UInt8] {
        let h = Header(
            type: body.type, cluster: "test", senderID: 0, incarnation: incarnation, messageID: 4242, origin: origin)
        return try! Message(header: h, body: body).encode()
    }

    func threeNodes(detector: Bool) -> TestNet {
        var net = TestNet()
        for i in 1...3 { _ = net.add("10.0.0.\(i)", detector: detector) }
        for i in 0..<3 { net.start(i) }
        net.advance(by: 2_000_000_000)
        return net
    }

    // Defect 1: refutation goes past the accusation, not just one above our own incarnation.
    @Test func refutationJumpsPastTheAccusation() {
        var map = NodeMap()
        var d = DiscoveryCore(me: SelfInfo(address: IPAddress("10.0.0.1")!), incarnation: 5, seed: 1)
        _ = d.start(now: 0, map: &map)
        _ = d.refute(past: 100, now: 1, map: &map)
        #expect(d.incarnation == 101)
        _ = d.refute(past: 3, now: 2, map: &map)
        #expect(d.incarnation == 102)
        _ = d.refute(past: .max, now: 3, map: &map)
        #expect(d.incarnation == .max)  // saturates, never wraps to 0
    }

    // Defect 1: a node restarted with an incarnation below what peers remember (its clock stepped
    // back) is told, jumps past it, and every map takes it back.
    @Test func restartBelowRememberedIncarnationRecovers() {
        var net = TestNet()
        _ = net.add("10.0.0.1")
        _ = net.add("10.0.0.2", incarnation: 1_000_000)
        _ = net.add("10.0.0.3")
        for i in 0..<3 { net.start(i) }
        net.advance(by: 1_000_000_000)
        let b = IPAddress("10.0.0.2")!
        #expect(net.nodes[0].map[b]?.incarnation == 1_000_000)
        net.stop(1)  // leave
        net.down.remove(1)
        let again = net.add("10.0.0.2", incarnation: 7)  // the clock went back
        net.start(again)
        net.advance(by: 3_000_000_000)
        #expect(net.nodes[again].incarnation > 1_000_000)
        for n in [0, 2] {
            #expect(net.nodes[n].map[b]?.state == .alive, "node \(n)")
            #expect((net.nodes[n].map[b]?.incarnation ?? 0) > 1_000_000, "node \(n)")
        }
    }

    // Issue 13: an older life's announce or join while every map holds the node alive at a higher
    // incarnation (a replay, a delayed datagram) is dropped as stale_incarnation and answered with
    // nothing: it cannot make the live node refute. A real restart below the remembered
    // incarnation after a crash (clock back, map file lost) still recovers, once the detector has
    // declared the old life dead.
    @Test func olderLifeOfALiveMemberIsIgnored() {
        var net = TestNet()
        _ = net.add("10.0.0.1", detector: true)
        _ = net.add("10.0.0.2", detector: true, incarnation: 1_000_000)
        _ = net.add("10.0.0.3", detector: true)
        for i in 0..<3 { net.start(i) }
        net.advance(by: 3_000_000_000)
        let b = IPAddress("10.0.0.2")!
        let old = forged(.announce(NodeInfo(heartbeatPort: 7778)), origin: b, incarnation: 7)
        for body in [old, forged(.join(NodeInfo(heartbeatPort: 7778)), origin: b, incarnation: 7)] {
            for n in [0, 2] { net.inject(body, to: n) }
        }
        net.advance(by: 100_000_000)
        #expect(net.nodes[1].incarnation == 1_000_000)
        for n in [0, 2] {
            #expect(net.nodes[n].counters.drops[.staleIncarnation] == 2, "node \(n)")
            #expect(net.nodes[n].map[b]?.incarnation == 1_000_000 && net.nodes[n].map[b]?.state == .alive)
        }

        net.down.insert(1)  // crash: no leave
        let again = net.add("10.0.0.2", detector: true, incarnation: 7)
        net.start(again)
        net.advance(by: 8_000_000_000)
        #expect(net.nodes[again].incarnation > 1_000_000)
        for n in [0, 2] {
            #expect(net.nodes[n].map[b]?.state == .alive, "node \(n)")
            #expect((net.nodes[n].map[b]?.incarnation ?? 0) > 1_000_000, "node \(n)")
        }
    }

    // Issue 13 (found under a 60 s flood): a node that missed a refutation (its announce lost) takes
    // the new incarnation from the refuter's next heartbeat, so a death it declares later names the
    // incarnation every other map holds, and is not ignored as stale.
    @Test func missedRefutationIsLearnedFromTheNextDatagram() {
        var net = threeNodes(detector: true)
        let b = IPAddress("10.0.0.2")!
        let inc = net.nodes[1].incarnation
        net.inject(forged(.heartbeat(sequence: 1, periodMillis: 150), origin: b, incarnation: inc + 5), to: 0)
        #expect(net.nodes[0].map[b]?.incarnation == inc + 5)
        #expect(net.nodes[0].map[b]?.state == .alive)
        // A lower one changes nothing (it is dropped as stale).
        net.inject(forged(.heartbeat(sequence: 2, periodMillis: 150), origin: b, incarnation: inc + 1), to: 0)
        #expect(net.nodes[0].map[b]?.incarnation == inc + 5)
    }

    // Defects 11: a forged leave about a live node, sent by a host that runs no discd, is contradicted
    // by that node at once: every map holds it alive again after one round trip.
    @Test func forgedLeaveIsRefutedAtOnce() {
        for detector in [false, true] {
            var net = threeNodes(detector: detector)
            let b = IPAddress("10.0.0.2")!
            let inc = net.nodes[1].incarnation
            let leave = forged(.leave, origin: b, incarnation: inc)
            for n in 0..<3 { net.inject(leave, to: n) }
            #expect(net.nodes[1].incarnation > inc, "detector \(detector)")
            for n in [0, 2] {
                #expect(net.nodes[n].map[b]?.state == .alive, "node \(n), detector \(detector)")
            }
            // A forged leave at a much higher incarnation is refuted past it too.
            let high = forged(.leave, origin: b, incarnation: inc + 1000)
            for n in 0..<3 { net.inject(high, to: n) }
            #expect(net.nodes[1].incarnation > inc + 1000)
            for n in [0, 2] { #expect(net.nodes[n].map[b]?.state == .alive) }
        }
    }

    // Defect 11: the forged leave reached the others but not the victim: its next announce is
    // answered (we hold it left at its incarnation) and it refutes.
    @Test func forgedLeaveTheVictimMissedHeals() {
        var net = threeNodes(detector: false)
        let b = IPAddress("10.0.0.2")!
        let leave = forged(.leave, origin: b, incarnation: net.nodes[1].incarnation)
        for n in [0, 2] { net.inject(leave, to: n) }
        #expect(net.nodes[0].map[b]?.state == .left)
        net.advance(by: 2_500_000_000)  // one announce interval and a half (1 s in this net)
        for n in [0, 2] { #expect(net.nodes[n].map[b]?.state == .alive, "node \(n)") }
    }

    // Defect 11: a forged death notice about a live node is refuted by it at once.
    @Test func forgedDeathIsRefutedAtOnce() {
        var net = threeNodes(detector: true)
        let b = IPAddress("10.0.0.2")!
        let inc = net.nodes[1].incarnation
        let dead = forged(.dead(target: b, targetIncarnation: inc, targetID: 2), origin: IPAddress("10.0.0.99")!, incarnation: 1)
        for n in 0..<3 { net.inject(dead, to: n) }
        #expect(net.nodes[1].incarnation > inc)
        for n in [0, 2] { #expect(net.nodes[n].map[b]?.state == .alive, "node \(n)") }
    }

    // Defect 4: a message from a stale incarnation neither refreshes last-heard nor counts as life.
    @Test func staleIncarnationDoesNotRefresh() {
        var net = threeNodes(detector: true)
        let b = IPAddress("10.0.0.2")!
        let inc = net.nodes[1].incarnation
        net.down.insert(1)
        net.advance(by: 100 * Self.ms)
        let heard = net.nodes[0].map[b]!.lastHeard
        net.advance(by: 100 * Self.ms)
        let hb = forged(.heartbeat(sequence: 9, periodMillis: 150), origin: b, incarnation: inc - 1)
        net.inject(hb, to: 0)
        #expect(net.nodes[0].map[b]!.lastHeard == heard)
        #expect(net.nodes[0].counters.drops[.staleIncarnation] == 1)
        // The current incarnation still counts.
        net.inject(forged(.heartbeat(sequence: 10, periodMillis: 150), origin: b, incarnation: inc), to: 0)
        #expect(net.nodes[0].map[b]!.lastHeard == net.now)
    }

    // Defect 10: entries learned from a map sync keep the sender's age and add its distance.
    @Test func mapSyncEntriesKeepAgeAndHops() {
        var map = NodeMap()
        var d = DiscoveryCore(me: SelfInfo(address: IPAddress("10.0.0.1")!), incarnation: 1, seed: 1)
        let now = Instant.zero + 100_000 * Self.ms
        _ = d.start(now: now, map: &map)
        let sender = IPAddress("10.0.0.2")!
        map.observe(NodeClaim(address: sender, incarnation: 1, hops: 1), now: now)
        let e = SyncEntry(
            address: IPAddress("10.0.9.9")!, preferredID: 0, explicitID: false, state: .alive, incarnation: 3,
            heartbeatPort: 7778, aliases: [], hops: 2, ageMillis: 5000)
        let m = Message(
            header: Header(type: .mapSync, cluster: "test", senderID: 0, incarnation: 1, messageID: 1, origin: sender),
            body: .mapSync(part: 0, parts: 1, entries: [e]))
        _ = d.receive(m, now: now, map: &map)
        let n = map[IPAddress("10.0.9.9")!]
        #expect(n?.lastHeard == now - 5000 * Self.ms)
        #expect(n?.hops == 3)
        // And the entry a node sends says how long ago it heard each node.
        let sync = d.mapSync(map, now: now + 1000 * Self.ms)
        guard case .mapSync(_, _, let entries)? = sync.first else {
            Issue.record("no map sync")
            return
        }
        #expect(entries.first { $0.address == IPAddress("10.0.9.9")! }?.ageMillis == 6000)
        #expect(entries.first { $0.address == IPAddress("10.0.9.9")! }?.hops == 3)
    }
}

/// The relay rules on their own (issue 14: the netns loop test alone could pass without them).
@Suite struct RelayLimitTests {
    func announce(from origin: String, id: UInt32, hops: UInt8) -> Message {
        Message(
            header: Header(
                type: .announce, hops: hops, cluster: "test", senderID: 0, incarnation: 1, messageID: id,
                origin: IPAddress(origin)!),
            body: .announce(NodeInfo(aliases: [], heartbeatPort: 7778, announceIntervalMillis: 1000, capabilities: [])))
    }

    func gateway(_ address: String, cache: Int = 16) -> DiscoveryCore {
        DiscoveryCore(
            settings: try! DiscoverySettings(relay: true, seenCacheSize: cache), me: SelfInfo(address: IPAddress(address)!),
            incarnation: 1, seed: 3)
    }

    @Test func hopCapRelaysSevenNotEight() {
        var g = gateway("10.0.0.250")
        let (p7, r7) = g.admit(announce(from: "10.0.0.1", id: 1, hops: 7), interface: 0, now: 0)
        #expect(p7)
        guard case .relay(let fwd, let except)? = r7 else {
            Issue.record("hops 7 not relayed: \(String(describing: r7))")
            return
        }
        #expect(fwd.header.hops == 8)
        #expect(except == 0)
        let (p8, r8) = g.admit(announce(from: "10.0.0.1", id: 2, hops: 8), interface: 0, now: 0)
        #expect(p8)  // still processed, just not forwarded
        #expect(r8 == nil)
    }

    /// Two gateways between LAN 0 and LAN 1: g1 relays 0 → 1, g2 relays 1 → 0, and so on. Returns how
    /// many relays one original causes when `noise` other messages pass each gateway between two
    /// arrivals of the looping copy.
    func loopRelays(noise: Int, cache: Int) -> Int {
        var g = [gateway("10.0.0.251", cache: cache), gateway("10.0.0.252", cache: cache)]
        var msg = announce(from: "10.0.0.1", id: 99, hops: 0)
        var relays = 0
        var at = 0
        var iface = 0
        for step in 0..<64 {
            for k in 0..<noise {
                _ = g[at].admit(announce(from: "10.0.9.\(k % 200 + 1)", id: UInt32(1000 * step + k), hops: 0), interface: 0, now: 0)
            }
            let (_, r) = g[at].admit(msg, interface: iface, now: 0)
            guard case .relay(let fwd, let except)? = r else { break }
            relays += 1
            msg = fwd
            iface = 1 - except  // the other gateway hears it on the other LAN
            at = 1 - at
        }
        return relays
    }

    @Test func seenCacheStopsTheLoopAndTheHopCapBoundsItWhenTheCacheIsFull() {
        // Working cache: each gateway relays the original once, the copy coming back is recognised.
        #expect(loopRelays(noise: 0, cache: 16) == 2)
        // A cache flushed between arrivals (more traffic than it holds): the hop cap alone ends it.
        let full = loopRelays(noise: 40, cache: 16)
        #expect(full >= 2)
        #expect(full <= Int(Wire.maxHops))
    }
}

/// A replayed stale announce cannot make a node a stream of unicasts at its victim.
@Suite struct RevivalRateTests {
    @Test func revivalAnswerAtMostOncePerAnnounceInterval() {
        var map = NodeMap()
        var d = DiscoveryCore(
            settings: try! DiscoverySettings(baseInterval: .seconds(1)), me: SelfInfo(address: IPAddress("10.0.0.1")!),
            incarnation: 1, seed: 1)
        _ = d.start(now: .zero, map: &map)
        let victim = IPAddress("10.0.0.2")!
        map.observe(NodeClaim(address: victim, incarnation: 50), now: .zero)
        let stale = Message(
            header: Header(type: .announce, cluster: "test", senderID: 0, incarnation: 7, messageID: 1, origin: victim),
            body: .announce(NodeInfo(heartbeatPort: 7778)))
        func answers(_ out: [DiscoveryOutput]) -> Int {
            out.filter { if case .unicast(.dead(victim, 50, _), victim) = $0 { true } else { false } }.count
        }
        var total = 0
        for k in 0..<100 { total += answers(d.receive(stale, now: Instant.zero + .milliseconds(UInt64(k)), map: &map)) }
        #expect(total == 1)
        // A second later it is answered again (the node may really still be below).
        #expect(answers(d.receive(stale, now: Instant.zero + .milliseconds(1100), map: &map)) == 1)
    }
}
