import Cluster
import ControlProtocol
import Detector
import Discovery
import NIOCore
import NIOEmbedded
import NodeMap
import Testing
import Wire
import Foundation
import Glibc

@testable import discd

/// Defect 8 of the first wave: the route-table parser read field 7 after checking only that there
/// were more than 3 fields.
@Suite struct RouteTableTests {
    let header = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"

    @Test func shortLinesAreSkippedNotReadPast() {
        let table = header + "e0\t00000000\t0101A8C0\n" + "e1\t00000000\n" + "e2\t0001A8C0\t00000000\t0001\t0\t0\t0\n"
        #expect(Interfaces.defaultRouteInterface(route: table, ipv6Route: nil) == nil)
    }

    @Test func defaultRouteIsTheLineWithZeroDestinationAndMask() {
        let table = header
            + "e1\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
            + "e0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        #expect(Interfaces.defaultRouteInterface(route: table, ipv6Route: nil) == "e0")
    }

    @Test func ipv6TableIsTheFallback() {
        let v6 = String(repeating: "0", count: 32) + " 00 " + String(repeating: "0", count: 32)
            + " 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 e5\n"
        #expect(Interfaces.defaultRouteInterface(route: header, ipv6Route: v6) == "e5")
        #expect(Interfaces.defaultRouteInterface(route: nil, ipv6Route: "short line\n") == nil)
    }
}

/// Defect 9: a link-local IPv6 destination is reached through the link it was heard on, not
/// always through the first interface.
@Suite struct LinkScopeTests {
    @Test func linkLocalUnicastUsesTheLinkItWasHeardOn() throws {
        let loop = EmbeddedEventLoop()
        let sink = LogSink(target: .stderr, format: .json, debug: false, startNanos: 0)
        let ifs = [
            ClusterInterface(name: "ea", index: 11, address: IPAddress("fe80::1")!, device: try anyDevice()),
            ClusterInterface(name: "eb", index: 12, address: IPAddress("fe80::2")!, device: try anyDevice()),
        ]
        let t = try UDPTransport(
            loop: loop, family: .ipv6, interfaces: ifs, group: IPAddress("ff05::d15c:77")!, port: 7777,
            heartbeatPort: 7778, ttl: nil, sink: sink)
        let peer = IPAddress("fe80::99")!
        t.linkOf = { $0 == peer ? 1 : nil }
        let a = try #require(t.socketAddress(peer, port: 7777))
        guard case .v6(let v6) = a else {
            Issue.record("not an IPv6 socket address: \(a)")
            return
        }
        #expect(v6.address.sin6_scope_id == 12)
        // A link-local address never heard falls back to the first link; a global one has no scope.
        if case .v6(let other) = try #require(t.socketAddress(IPAddress("fe80::55")!, port: 7777)) {
            #expect(other.address.sin6_scope_id == 11)
        }
        if case .v6(let global) = try #require(t.socketAddress(IPAddress("fd00::5")!, port: 7777)) {
            #expect(global.address.sin6_scope_id == 0)
        }
    }

    func anyDevice() throws -> NIONetworkDevice {
        try #require(try System.enumerateDevices().first)
    }
}

/// A transport that records what it is asked to send; `reaches` says which unicasts it takes.
final class RecordingTransport: Transport, @unchecked Sendable {
    let name: String
    let unicastRank: Int
    var reaches: (IPAddress) -> Bool = { _ in true }
    var sent: [[UInt8]] = []
    var unicasts: [IPAddress] = []
    init(_ name: String, rank: Int = 1) {
        self.name = name
        self.unicastRank = rank
    }
    func start(deliver: @escaping @Sendable (Datagram) -> Void) async throws {}
    func multicast(_ bytes: [UInt8], except: Int?) { sent.append(bytes) }
    func unicast(_ bytes: [UInt8], to: IPAddress, port: UInt16?) -> Bool {
        guard reaches(to) else { return false }
        sent.append(bytes)
        unicasts.append(to)
        return true
    }
    func close() async {}
    var counters: TransportCounters { TransportCounters() }
}

/// The transport seam: a datagram that arrives over two transports is handled once.
@Suite struct TransportSeamTests {
    @Test func sameDatagramOverTwoTransportsIsHandledOnce() throws {
        let loop = EmbeddedEventLoop()
        let sink = LogSink(target: .stderr, format: .json, debug: false, startNanos: 0)
        let me = SelfInfo(address: IPAddress("10.0.0.1")!, heartbeatPort: 7778)
        var node = ClusterNode(
            config: ClusterConfig(cluster: "test", me: me, incarnation: 1, detector: nil, seed: 1), now: 0)
        _ = node.start(now: 0)
        let dir = TestDirectories.temporaryDirectory()
        let publisher = MapPublisher(mapPath: dir + "/m.map", statusPath: nil, sink: sink)
        let udp = RecordingTransport("udp")
        let rdma = RecordingTransport("rdma")
        let driver = NodeDriver(loop: loop, node: node, transports: [udp, rdma], publisher: publisher, sink: sink)
        let other = Message(
            header: Header(type: .announce, cluster: "test", senderID: 0, incarnation: 5, messageID: 1, origin: IPAddress("10.0.0.2")!),
            body: .announce(NodeInfo(heartbeatPort: 7778)))
        let bytes = try other.encode()
        driver.received(Datagram(bytes: bytes, link: 0))
        driver.received(Datagram(bytes: bytes, link: 0))
        #expect(driver.node.counters.datagramsReceived == 1)
        #expect(driver.duplicatesAcrossTransports == 1)
        #expect(driver.node.map[IPAddress("10.0.0.2")!]?.incarnation == 5)
        // A different datagram still gets through.
        var again = other
        again.header.messageID = 2
        driver.received(Datagram(bytes: try again.encode(), link: 0))
        #expect(driver.node.counters.datagramsReceived == 2)
    }
}

/// Unicasts (detector traffic, map syncs) go over the preferred transport (RDMA) when it reaches the
/// node, else over the next (IP); multicasts go over every transport.
@Suite struct UnicastRouteTests {
    @Test func preferredTransportFirstThenFallback() throws {
        let loop = EmbeddedEventLoop()
        let udp = RecordingTransport("udp", rank: 1)
        let rdma = RecordingTransport("rdma", rank: 0)
        let withRDMA = IPAddress("10.0.0.2")!
        let ipOnly = IPAddress("10.0.0.3")!
        rdma.reaches = { $0 == withRDMA }
        // Listed IP first: the rank, not the order, decides.
        let driver = TestDriver.make(loop, transports: [udp, rdma])
        driver.unicast([1], to: withRDMA, port: 7778)
        driver.unicast([2], to: ipOnly, port: 7778)
        #expect(rdma.unicasts == [withRDMA])
        #expect(udp.unicasts == [ipOnly])
        // The RDMA endpoint goes down: the same node is reached over IP.
        rdma.reaches = { _ in false }
        driver.unicast([3], to: withRDMA, port: nil)
        #expect(udp.unicasts == [ipOnly, withRDMA])
        #expect(rdma.unicasts == [withRDMA])
    }
}

/// A node driver for 10.0.0.1 (no detector) on `loop`, writing its map to a temporary directory.
enum TestDriver {
    static func make(_ loop: EventLoop, transports: [any Transport]) -> NodeDriver {
        let sink = LogSink(target: .stderr, format: .json, debug: false, startNanos: 0)
        let node = ClusterNode(
            config: ClusterConfig(cluster: "test", me: SelfInfo(address: IPAddress("10.0.0.1")!), incarnation: 1, detector: nil, seed: 1),
            now: 0)
        let publisher = MapPublisher(mapPath: TestDirectories.temporaryDirectory() + "/m.map", statusPath: nil, sink: sink)
        return NodeDriver(loop: loop, node: node, transports: transports, publisher: publisher, sink: sink)
    }
}

enum TestDirectories {
    /// One directory for the test process, removed (with what the tests wrote in it) when the
    /// process exits: the drivers these tests make keep their map paths until then.
    static let root: String = {
        let r = makeDirectory("/tmp/discd-shell-XXXXXX")
        atexit { removeTree(TestDirectories.root) }
        return r
    }()

    /// A fresh directory of its own under `root`.
    static func temporaryDirectory() -> String { makeDirectory(root + "/d-XXXXXX") }

    static func makeDirectory(_ template: String) -> String {
        var t = Array(template.utf8CString)
        return t.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    }

    static func removeTree(_ path: String) { try? FileManager.default.removeItem(atPath: path) }
}

/// Defect 6: the interface watcher ran on a Dispatch timer that was never cancelled and could
/// schedule work after the event loop shut down. Now it is a task on the loop, cancelled on stop.
@Suite struct InterfaceWatcherTests {
    @Test func noPollAfterStop() throws {
        let loop = EmbeddedEventLoop()
        let driver = TestDriver.make(loop, transports: [])
        let sink = driver.sink
        let w = InterfaceWatcher(
            loop: loop, names: ["lo"], family: .ipv4, primary: IPAddress("127.0.0.1")!, initial: [], source: .interface,
            sink: sink, driver: driver)
        w.start(every: .seconds(5))
        loop.run()
        loop.advanceTime(by: .seconds(11))
        #expect(w.polls == 2)
        w.stop()
        loop.run()
        loop.advanceTime(by: .seconds(60))
        #expect(w.polls == 2)
    }
}

/// One settings source: `discd` and `discd simulate` declare the protocol options once, so their
/// help prints the same defaults, and those are the core types' defaults.
@Suite struct SharedDefaultsTests {
    func optionLines(_ help: String) -> [String] {
        let names = ["--preset", "--period", "--timeout", "--confirmations", "--confirm-window", "--announce-interval", "--no-detector"]
        // ArgumentParser wraps long help; join continuation lines to their option.
        var out: [String] = []
        for line in help.split(separator: "\n").map(String.init) {
            let t = line.trimmingPrefix(while: { $0 == " " })
            if t.hasPrefix("-") {
                out.append(String(t))
            } else if !out.isEmpty, line.hasPrefix("      ") {
                out[out.count - 1] += " " + t
            }
        }
        return out.filter { l in names.contains { l.hasPrefix($0 + " ") || l == $0 } }
    }

    @Test func discdAndSimulateHelpPrintTheSameDefaults() {
        let daemon = optionLines(DiscdCommand.helpMessage(columns: 400))
        let simulate = optionLines(SimulateCommand.helpMessage(columns: 400))
        #expect(daemon.count == 7, "\(daemon)")
        #expect(daemon == simulate)
        let d = DetectorSettings.default
        let text = daemon.joined(separator: "\n")
        #expect(text.contains("(default: \(DurationText.format(d.period)))"))
        #expect(text.contains("(default: \(DurationText.format(d.timeout)))"))
        #expect(text.contains("(default: \(DurationText.format(d.confirmWindow)))"))
        #expect(text.contains("(default: \(DurationText.format(DiscoverySettings.default.baseInterval)))"))
        #expect(text.contains("150ms") && text.contains("450ms") && text.contains("600ms") && text.contains("3s"))
    }
}

extension String {
    func trimmingPrefix(while p: (Character) -> Bool) -> Substring {
        var s = Substring(self)
        while let c = s.first, p(c) { s = s.dropFirst() }
        return s
    }
}

/// The event stream's subscriber: what a slow reader cannot take is dropped and counted, never
/// queued without bound, and it is told how many with a DROPPED marker once it drains.
@Suite struct EventStreamSubscriberTests {
    @Test func unwritableSubscriberDropsAndIsToldTheCount() throws {
        let loop = EmbeddedEventLoop()
        let hub = EventHub(loop: loop, epoch: 7)
        let ch = EmbeddedChannel(loop: loop)
        let sub = Subscriber(channel: ch, filter: EventFilter(), text: false, hub: hub)
        hub.subscribe(sub, since: nil)
        func lines() throws -> [String] {
            var out: [String] = []
            while let b = try ch.readOutbound(as: ByteBuffer.self) {
                out += String(buffer: b).split(separator: "\n").map(String.init)
            }
            return out
        }
        let ack = try lines()
        #expect(ack.count == 1 && ack[0].hasPrefix("{\"ok\":true"))
        let item = StreamItem(space: .membership, name: "NODE_JOIN", severity: .info, node: "10.0.0.2", nodeID: 2)
        hub.publish(item)
        #expect(try lines().count == 1)
        ch.isWritable = false
        for _ in 0..<10 { hub.publish(item) }
        #expect(hub.dropped == 10)
        #expect(try lines().isEmpty)
        ch.isWritable = true
        sub.writable()
        let after = try lines()
        #expect(after == ["{\"marker\":\"DROPPED\",\"count\":10}"])
        // The history still holds all 11: a reconnect with --since gets them back.
        #expect(hub.history.lastSeq == 11)
        #expect(hub.history.since(1).events.count == 10)
    }

    @Test func controlRequestsParseOrAreRefused() throws {
        let ok = try ControlRequest.parse(#"{"op":"subscribe","since":5,"names":["NODE_DEAD"],"severity":"error","format":"text"}"#)
        #expect(ok == .subscribe(filter: EventFilter(names: ["NODE_DEAD"], minSeverity: .error), since: 5, text: true))
        for bad in [
            "", "[]", "{}", #"{"op":"subscribe","since":-1}"#, #"{"op":"subscribe","since":"5"}"#, #"{"op":"nope"}"#,
            #"{"op":"subscribe","spaces":["discd.nowhere"]}"#, #"{"op":"subscribe"} trailing"#, #"{"op":"subscribe","op":"subscribe"}"#,
            #"{"op":"subscribe","since":99999999999999999999999}"#, "{\"op\":\"sub\u{01}scribe\"}",
        ] {
            #expect(throws: ControlRequest.Invalid.self, "\(bad)") { try ControlRequest.parse(bad) }
        }
        // Random bytes never trap the parser.
        var rng = SplitMix64(seed: 42)
        for _ in 0..<20_000 {
            let n = Int(rng.next() % 64)
            let bytes = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            _ = try? ControlRequest.parse(String(decoding: bytes, as: UTF8.self))
        }
    }
}
