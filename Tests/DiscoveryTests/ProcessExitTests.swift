import Cluster
import NodeMap
import Testing
import Wire

/// Process-exit notices in the pure core: repaired past lost multicasts by the binomial-graph
/// forwards, reported once per node, and — for exits the kernel module watched — reported once
/// whichever of its two paths (fdmod's immediate, the daemon's notice) arrives first.
@Suite struct ProcessExitTests {
    func exits(_ net: TestNet, at n: Int) -> [ClusterEvent] {
        net.events.filter { $0.node == n }.map(\.event).filter {
            switch $0 {
            case .processExited, .processNotice: true
            default: false
            }
        }
    }

    func cluster(_ count: Int) -> TestNet {
        var net = TestNet()
        for i in 1...count { _ = net.add("10.0.0.\(i)", detector: true) }
        for i in net.nodes.indices { net.start(i) }
        net.advance(by: .seconds(2))
        for i in net.nodes.indices { net.nodes[i].eventLevel = .info }
        net.recordEvents = true
        return net
    }

    @Test func aNodeThatLosesEveryMulticastCopyLearnsByTheForwards() throws {
        var net = cluster(16)
        #expect(net.nodes.indices.allSatisfy { net.members(of: $0).count == 16 })
        // Three nodes hear no multicast at all: neither the first copy nor the resends.
        net.deafToMulticast = [3, 9, 14]
        let out = net.nodes[0].processExited(pid: 77, startTime: 5, status: 9, tag: 4, name: "rank0", now: net.now)
        net.queue += out.map { (0, $0) }
        net.run()
        for d in net.deafToMulticast { #expect(exits(net, at: d).isEmpty) }
        net.advance(by: .milliseconds(400), step: .milliseconds(10))
        for n in net.nodes.indices {
            let e = exits(net, at: n)
            #expect(e.count == 1, "node \(n): \(e)")
            guard case .processExited(let p)? = e.first else { continue }
            #expect(p.pid == 77 && p.tag == 4 && p.node == TestNet.address("10.0.0.1") && p.signal == 9)
        }
        let forwards = net.nodes.map(\.counters.exitForwardsSent).reduce(0, +)
        #expect(forwards > 0)
        // Each node forwards each exit once (to at most 2·⌈log2 16⌉ = 8 neighbours).
        #expect(forwards <= 16 * 8)
        #expect(net.nodes.map(\.counters.duplicateExitNotices).reduce(0, +) > 0)
    }

    @Test func withoutForwardsTheDeafNodesWouldNotKnow() throws {
        // The control case: with the detector off there is no binomial graph, and the deaf node
        // never learns (so the test above cannot pass by multicast alone).
        var net = TestNet()
        for i in 1...4 { _ = net.add("10.0.0.\(i)") }
        for i in net.nodes.indices { net.start(i) }
        net.recordEvents = true
        for i in net.nodes.indices { net.nodes[i].eventLevel = .info }
        net.deafToMulticast = [2]
        net.queue += net.nodes[0].processExited(pid: 1, startTime: 1, status: 0, tag: 0, name: "x", now: net.now).map { (0, $0) }
        net.advance(by: .milliseconds(500), step: .milliseconds(10))
        #expect(exits(net, at: 2).isEmpty)
        #expect(exits(net, at: 1).count == 1)
    }

    @Test func kernelExitIsReportedOnceWhicheverPathComesFirst() throws {
        var net = cluster(3)
        let id = net.nodes[1].map[TestNet.address("10.0.0.1")]!.id
        func kernelNotice(pid: UInt32, tag: UInt16) -> [UInt8] {
            // What node 0's daemon multicasts for an exit its kernel module watched.
            let out = net.nodes[0].processExited(pid: pid, startTime: UInt64(pid), status: 9, tag: tag, source: .kernel, name: "k", now: net.now)
            return out.compactMap { if case .multicast(let b, _) = $0 { b } else { nil } }.first!
        }
        func arrive(imm tag: UInt16) -> [ClusterEvent] {
            net.nodes[1].receiveImmediate(ProcessNotice(nodeID: id.rawValue, tag: tag).immediate, now: net.now).compactMap {
                if case .event(let e) = $0 { e } else { nil }
            }
        }
        func arrive(_ bytes: [UInt8]) -> [ClusterEvent] {
            net.nodes[1].receive(bytes, interface: 0, now: net.now).compactMap { if case .event(let e) = $0 { e } else { nil } }
        }
        // Immediate first: the later notice is not reported again.
        #expect(arrive(imm: 5).count == 1)
        #expect(arrive(kernelNotice(pid: 100, tag: 5)).isEmpty)
        // Notice first: the later immediate is not reported again.
        #expect(arrive(kernelNotice(pid: 101, tag: 6)).count == 1)
        #expect(arrive(imm: 6).isEmpty)
        // Two exits with one tag, both immediates first: both notices pair, a third exit reports.
        #expect(arrive(imm: 8).count == 1)
        #expect(arrive(imm: 8).count == 1)
        #expect(arrive(kernelNotice(pid: 102, tag: 8)).isEmpty)
        #expect(arrive(kernelNotice(pid: 103, tag: 8)).isEmpty)
        #expect(arrive(kernelNotice(pid: 104, tag: 8)).count == 1)
        #expect(net.nodes[1].counters.pairedKernelExits == 4)
        // A daemon-watched exit never pairs with an immediate of the same tag.
        #expect(arrive(imm: 9).count == 1)
        let out = net.nodes[0].processExited(pid: 105, startTime: 1, status: 0, tag: 9, name: "d", now: net.now)
        let daemonNotice = out.compactMap { if case .multicast(let b, _) = $0 { b } else { nil } }.first!
        #expect(arrive(daemonNotice).count == 1)
        // Past the pairing window an unpaired immediate no longer swallows a notice.
        #expect(arrive(imm: 10).count == 1)
        net.now = net.now + .seconds(11)
        #expect(arrive(kernelNotice(pid: 106, tag: 10)).count == 1)
    }
}
