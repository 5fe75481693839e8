import Cluster
import NodeMap
import Testing

/// The event stream's pure parts: the numbered bounded history and the mapping of cluster events
/// to stream events (names, severities, the per-node state machine).
@Suite struct EventHistoryTests {
    let item = StreamItem(space: .membership, name: "NODE_JOIN", severity: .info, node: "10.0.0.1", nodeID: 1)

    @Test func resumeWithinAndBeyondTheHistory() {
        var h = EventHistory(capacity: 4, epoch: 9)
        #expect(h.since(0).gap == nil && h.since(0).events.isEmpty)
        for t in 1...6 { _ = h.append(item, timeUnixMillis: Int64(t)) }
        // 6 numbered, the last 4 kept: 3...6.
        #expect(h.lastSeq == 6 && h.oldestSeq == 3)
        #expect(h.all.map(\.seq) == [3, 4, 5, 6])
        #expect(h.since(4).gap == nil && h.since(4).events.map(\.seq) == [5, 6])
        #expect(h.since(2).gap == nil && h.since(2).events.map(\.seq) == [3, 4, 5, 6])
        #expect(h.since(6).events.isEmpty)
        // 1 and 2 are gone: the subscriber is told exactly which.
        #expect(h.since(0).gap == .evicted(from: 1, to: 2))
        // Beyond anything numbered: another life of the daemon.
        #expect(h.since(7).gap == .restarted(lastSeq: 6))
        #expect(h.all.allSatisfy { $0.epoch == 9 })
    }

    @Test func filters() {
        var h = EventHistory(capacity: 8, epoch: 1)
        let join = h.append(item, timeUnixMillis: 0)
        let dead = h.append(
            StreamItem(space: .membership, name: "NODE_DEAD", severity: .error, node: "10.0.0.1", nodeID: 1), timeUnixMillis: 0)
        let proc = h.append(StreamItem(space: .process, name: "PROC_EXIT", severity: .error, node: nil, nodeID: nil), timeUnixMillis: 0)
        #expect(EventFilter(minSeverity: .error).matches(join) == false)
        #expect(EventFilter(minSeverity: .error).matches(dead))
        #expect(EventFilter(spaces: ["discd.process"]).matches(proc) && !EventFilter(spaces: ["discd.process"]).matches(dead))
        #expect(EventFilter(names: ["NODE_DEAD"]).matches(dead) && !EventFilter(names: ["NODE_DEAD"]).matches(join))
        #expect(dead.jsonLine.contains("\"name\":\"NODE_DEAD\"") && dead.jsonLine.contains("\"severity\":\"ERROR\""))
    }

    @Test func membershipTransitionsMapToTheStateMachine() {
        let a = IPAddress("10.0.0.2")!
        let id = NodeID(2)!
        func name(_ from: NodeState, _ to: NodeState) -> String? {
            StreamMapping.item(for: .member(.stateChanged(address: a, id: id, from: from, to: to, incarnation: 3)))?.name
        }
        #expect(name(.alive, .suspect) == "NODE_SUSPECT")
        #expect(name(.suspect, .alive) == "NODE_REFUTE")
        #expect(name(.suspect, .dead) == "NODE_DEAD")
        #expect(name(.alive, .dead) == "NODE_DEAD")
        #expect(name(.alive, .left) == "NODE_LEAVE")
        #expect(name(.suspect, .left) == "NODE_LEAVE")
        #expect(name(.dead, .alive) == "NODE_JOIN")
        #expect(name(.left, .alive) == "NODE_JOIN")
        let dead = StreamMapping.item(for: .member(.stateChanged(address: a, id: id, from: .suspect, to: .dead, incarnation: 3)))
        #expect(dead?.severity == .error && dead?.space == .membership && dead?.node == "10.0.0.2" && dead?.nodeID == 2)
        let notice = StreamMapping.item(for: .processNotice(node: a, id: id, tag: 42))
        #expect(notice?.name == "PROC_EXIT" && notice?.space == .process)
        // Datagram-level chatter is not published.
        #expect(StreamMapping.item(for: .dropped(.tooShort, from: nil)) == nil)
    }
}
