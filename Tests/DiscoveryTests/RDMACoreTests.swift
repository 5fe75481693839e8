import Cluster
import Discovery
import NodeMap
import Testing
import Wire

/// What the RDMA transport needs from the pure cores: a node's endpoint (capability) travels in its
/// announce to every map, changes when the endpoint changes, and immediate-only notices decode
/// against the map.
@Suite struct RDMACoreTests {
    let endpoint = Capability.rdma(gidHi: 0, gidLo: 0x0000_FFFF_0A63_000A, qpn: 0x11, qkey: 0x0123_4567)

    @Test func endpointReachesEveryMapAndFollowsChanges() throws {
        var net = TestNet()
        let a = net.add("10.0.0.1")
        let b = net.add("10.0.0.2")
        net.start(a)
        net.start(b)
        let addrA = TestNet.address("10.0.0.1")
        #expect(net.nodes[b].map[addrA]?.capabilities == [])

        let out = net.nodes[a].capabilitiesChanged([endpoint], now: net.now)
        // One announce, carrying the endpoint.
        let announces = out.compactMap { e -> NodeInfo? in
            guard case .multicast(let bytes, _) = e, case .announce(let info)? = try? Message.decode(bytes).body else { return nil }
            return info
        }
        #expect(announces.map(\.capabilities) == [[endpoint]])
        #expect(net.nodes[a].map[addrA]?.capabilities == [endpoint])
        net.queue += out.map { (a, $0) }
        net.run()
        #expect(net.nodes[b].map[addrA]?.capabilities == [endpoint])

        // Unchanged: nothing to say. Gone (device removed): the others learn that too.
        #expect(net.nodes[a].capabilitiesChanged([endpoint], now: net.now).isEmpty)
        net.queue += net.nodes[a].capabilitiesChanged([], now: net.now).map { (a, $0) }
        net.run()
        #expect(net.nodes[b].map[addrA]?.capabilities == [])
    }

    @Test func aNewcomerLearnsTheAnswerersEndpointWithItsMap() {
        // b starts after a has its endpoint: b learns a from a's map answer, whose entries carry no
        // capabilities; a's announce by unicast brings the endpoint at once, not a's next announce.
        var net = TestNet()
        let a = net.add("10.0.0.1")
        let b = net.add("10.0.0.2")
        let addrA = TestNet.address("10.0.0.1")
        net.down.insert(b)
        net.start(a)
        net.queue += net.nodes[a].capabilitiesChanged([endpoint], now: net.now).map { (a, $0) }
        net.run()
        net.down.remove(b)
        net.start(b)
        #expect(net.nodes[b].map[addrA]?.state == .alive)
        #expect(net.nodes[b].map[addrA]?.capabilities == [endpoint])
        #expect(net.nodes[a].discovery.stats.introductionsSent == 1)
        // Without capabilities nothing extra is sent: b has none to tell a newcomer.
        let c = net.add("10.0.0.3")
        net.start(c)
        #expect(net.nodes[c].map[addrA]?.capabilities == [endpoint])
        #expect(net.nodes[b].discovery.stats.introductionsSent == 0)
    }

    @Test func immediateNoticeDecodesAgainstTheMap() {
        var net = TestNet()
        let a = net.add("10.0.0.1")
        let b = net.add("10.0.7.2")
        net.start(a)
        net.start(b)
        net.nodes[a].eventLevel = .info
        // Node 10.0.7.2 has ID 7·256+2 = 1794; tag 42.
        let notice = ProcessNotice(nodeID: 1794, tag: 42)
        #expect(ProcessNotice(immediate: notice.immediate) == notice)
        #expect(notice.immediate == 0x0702_002A)
        let out = net.nodes[a].receiveImmediate(notice.immediate, now: net.now)
        let events = out.compactMap { e -> ClusterEvent? in if case .event(let ev) = e { ev } else { nil } }
        #expect(events == [.processNotice(node: TestNet.address("10.0.7.2"), id: NodeID(1794)!, tag: 42)])
        #expect(events.first?.name == "process.notice")

        // An ID no map node holds (and ID 0) is counted and dropped, never an event.
        for bogus in [ProcessNotice(nodeID: 999, tag: 1), ProcessNotice(nodeID: 0, tag: 1)] {
            let o = net.nodes[a].receiveImmediate(bogus.immediate, now: net.now)
            #expect(!o.contains { if case .event(.processNotice) = $0 { true } else { false } })
        }
        #expect(net.nodes[a].counters.drops[.unknownNotice] == 2)
    }
}
