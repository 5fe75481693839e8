import Auth
import Cluster
import NodeMap
import Testing
import Wire

/// Cluster keys in the core: only holders of a key of the ring get into a map; forged, tampered,
/// wrongly keyed and replayed datagrams change nothing and are counted by reason; relays keep tags.
@Suite struct AuthClusterTests {
    static let keyA = try! ClusterKey(bytes: (0..<32).map { UInt8($0) })
    static let keyB = try! ClusterKey(bytes: (0..<32).map { UInt8($0 ^ 0x5A) })
    static func auth(_ keys: [ClusterKey], seed: UInt64 = 1 << 20, trust: Bool = false) -> AuthConfig {
        AuthConfig(keyring: try! Keyring(keys), counterSeed: seed, trustImmediates: trust)
    }

    @Test func onlyKeyHoldersGetIntoTheMaps() {
        var net = TestNet()
        let a = net.add("10.0.0.1", auth: Self.auth([Self.keyA]))
        let b = net.add("10.0.0.2", auth: Self.auth([Self.keyA]))
        let c = net.add("10.0.0.3", auth: Self.auth([Self.keyB]))
        let d = net.add("10.0.0.4")
        for n in [a, b, c, d] { net.start(n) }
        net.advance(by: .seconds(3))
        let ab: Set = [TestNet.address("10.0.0.1"), TestNet.address("10.0.0.2")]
        #expect(net.members(of: a) == ab && net.members(of: b) == ab)
        #expect(net.members(of: c) == [TestNet.address("10.0.0.3")])
        #expect(net.members(of: d) == [TestNet.address("10.0.0.4")])
        #expect((net.nodes[a].counters.drops[.unknownKey] ?? 0) > 0)       // c's datagrams
        #expect((net.nodes[a].counters.drops[.unauthenticated] ?? 0) > 0)  // d's
        #expect((net.nodes[d].counters.drops[.unverifiableTag] ?? 0) > 0)  // d has no key
    }

    @Test func forgedTamperedAndReplayedDatagramsChangeNothing() throws {
        var net = TestNet()
        let a = net.add("10.0.0.1", detector: true, auth: Self.auth([Self.keyA]))
        let b = net.add("10.0.0.2", detector: true, auth: Self.auth([Self.keyA]))
        net.recordDatagrams = true
        net.start(a)
        net.start(b)
        net.advance(by: .seconds(2))
        let addrB = TestNet.address("10.0.0.2")
        #expect(net.members(of: a).contains(addrB))
        // A forged leave in b's name: unsigned, signed with a key nobody has, or a real one altered.
        let forged = Header(
            type: .leave, flags: [], cluster: "test", senderID: 0, incarnation: 1 << 60, messageID: 9, origin: addrB)
        net.inject(try Message(header: forged, body: .leave).encode(), to: a)
        var wrongKey = forged
        wrongKey.flags = [.authenticated]
        wrongKey.keyID = Self.keyB.id
        wrongKey.replayCounter = 1 << 62
        var wk = try Message(header: wrongKey, body: .leave).encode()
        Seal.sign(&wk, key: Self.keyB)
        net.inject(wk, to: a)
        var tampered = net.datagrams.last { $0.from == b }!.bytes
        tampered[Wire.fixedHeader - 1] ^= 0xFF  // the origin's last byte
        net.inject(tampered, to: a)
        #expect(net.nodes[a].map[addrB]?.state == .alive)
        let drops = net.nodes[a].counters.drops
        #expect(drops[.unauthenticated] == 1 && drops[.unknownKey] == 1 && drops[.badTag] == 1)

        // b dies; once a has declared it dead, b's captured heartbeats and announces, replayed,
        // do not bring it back.
        let captured = net.datagrams.filter { $0.from == b }.map(\.bytes)
        #expect(captured.count > 10)
        net.down.insert(b)
        net.advance(by: .seconds(3))
        #expect(net.nodes[a].map[addrB]?.state == .dead)
        let before = net.nodes[a].counters.drops[.replayed] ?? 0
        for bytes in captured { net.inject(bytes, to: a) }
        net.advance(by: .seconds(1))
        #expect(net.nodes[a].map[addrB]?.state == .dead)
        #expect((net.nodes[a].counters.drops[.replayed] ?? 0) - before == captured.count)
    }

    @Test func gatewaysRelayKeyedDatagramsIntact() {
        var net = TestNet()
        let keyed = Self.auth([Self.keyA])
        let a = net.add("10.0.0.1", lans: [0], auth: keyed)
        let g = net.add("10.0.0.254", lans: [0, 1], aliases: ["10.1.0.254"], auth: keyed)
        let c = net.add("10.1.0.3", lans: [1], auth: keyed)
        for n in [a, g, c] { net.start(n) }
        net.advance(by: .seconds(3))
        #expect(net.members(of: c).contains(TestNet.address("10.0.0.1")))
        #expect(net.nodes[c].map[TestNet.address("10.0.0.1")]?.hops == 1)
        #expect(net.nodes[c].counters.drops[.badTag] == nil)
    }

    @Test func keyRotationWithoutDowntime() {
        var net = TestNet()
        let a = net.add("10.0.0.1", auth: Self.auth([Self.keyA]))
        let b = net.add("10.0.0.2", auth: Self.auth([Self.keyA]))
        net.start(a)
        net.start(b)
        net.advance(by: .seconds(2))
        // 1. every node accepts the new key; 2. a signs with it first (b still accepts); 3. b too; 4. the old one goes.
        for n in [a, b] { net.nodes[n].setKeyring(try! Keyring([Self.keyA, Self.keyB])) }
        net.nodes[a].setKeyring(try! Keyring([Self.keyB, Self.keyA]))
        net.advance(by: .seconds(2))
        net.nodes[b].setKeyring(try! Keyring([Self.keyB, Self.keyA]))
        net.advance(by: .seconds(2))
        for n in [a, b] { net.nodes[n].setKeyring(try! Keyring([Self.keyB])) }
        net.advance(by: .seconds(3))
        for n in [a, b] {
            #expect(net.members(of: n).count == 2)
            let d = net.nodes[n].counters.drops
            #expect(d[.unknownKey] == nil && d[.badTag] == nil && d[.replayed] == nil, "\(d)")
        }
    }

    @Test func immediatesNeedTrustWithKeys() {
        var net = TestNet()
        let a = net.add("10.0.0.1", auth: Self.auth([Self.keyA]))
        let t = net.add("10.0.0.3", auth: Self.auth([Self.keyA], trust: true))
        let b = net.add("10.0.7.2", auth: Self.auth([Self.keyA]))
        for n in [a, t, b] { net.start(n) }
        net.nodes[a].eventLevel = .info
        net.nodes[t].eventLevel = .info
        let imm = ProcessNotice(nodeID: 7 * 256 + 2, tag: 1).immediate
        #expect(!net.nodes[a].receiveImmediate(imm, now: net.now).contains { if case .event(.processNotice) = $0 { true } else { false } })
        #expect(net.nodes[a].counters.drops[.unauthenticated] == 1)
        #expect(net.nodes[t].receiveImmediate(imm, now: net.now).contains { if case .event(.processNotice) = $0 { true } else { false } })
    }
}
