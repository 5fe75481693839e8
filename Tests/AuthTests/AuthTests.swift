import Auth
import ExtrasBase64
import NodeMap
import Testing
import Wire

let keyA = try! ClusterKey(bytes: (0..<32).map { UInt8($0) })
let keyB = try! ClusterKey(bytes: (0..<32).map { UInt8(255 - $0) })

func signed(_ body: Body = .leave, key: ClusterKey = keyA, counter: UInt64 = 1, hops: UInt8 = 0) throws -> [UInt8] {
    let h = Header(
        type: body.type, flags: [.authenticated], hops: hops, cluster: "c", senderID: 0, incarnation: 1, messageID: 1,
        keyID: key.id, replayCounter: counter, origin: IPAddress("10.0.0.1")!)
    var b = try Message(header: h, body: body).encode()
    Seal.sign(&b, key: key)
    return b
}

@Suite struct KeyringTests {
    @Test func keyFileLinesFirstIsPrimary() throws {
        let a = Base64.encodeToString(bytes: (0..<32).map { UInt8($0) })
        let b = Base64.encodeToString(bytes: (0..<32).map { UInt8(255 - $0) })
        let ring = try Keyring.parse("# rotation in progress\n\(b)\n  \(a)  \n\n")
        #expect(ring.primary == keyB && ring.keys == [keyB, keyA])
        #expect(ring.key(id: keyA.id) == keyA && ring.key(id: 12345) == nil)
        #expect(keyA.id != keyB.id && keyA.id != 0)
    }

    @Test func badKeyFilesAreRefusedWithTheReason() {
        let short = Base64.encodeToString(bytes: [UInt8](repeating: 1, count: 16))
        let a = Base64.encodeToString(bytes: (0..<32).map { UInt8($0) })
        #expect(throws: KeyError.wrongLength(16)) { try Keyring.parse(short) }
        #expect(throws: KeyError.notBase64(line: 2)) { try Keyring.parse("\(a)\nnot base64!\n") }
        #expect(throws: KeyError.noKey) { try Keyring.parse("# nothing\n\n") }
        #expect(throws: KeyError.duplicate(line: 2)) { try Keyring.parse("\(a)\n\(a)\n") }
        #expect(throws: KeyError.wrongLength(0)) { try ClusterKey(bytes: []) }
    }
}

@Suite struct SealTests {
    @Test func signedDatagramVerifiesAndDecodes() throws {
        let b = try signed()
        #expect(Seal.verify(b, key: keyA))
        #expect(!Seal.verify(b, key: keyB))
        let m = try Message.decode(b)
        #expect(m.header.keyID == keyA.id && m.header.replayCounter == 1 && m.header.flags.contains(.authenticated))
    }

    @Test func everyFlippedBitButTheHopCountBreaksTheTag() throws {
        let b = try signed(.dead(target: IPAddress("10.0.0.9")!, targetIncarnation: 4, targetID: 9))
        for i in b.indices {
            var t = b
            t[i] ^= 0x01
            #expect(Seal.verify(t, key: keyA) == (i == Seal.hopsOffset), "byte \(i)")
        }
        // A gateway's relay (hops + 1) keeps the tag valid; a truncated datagram never verifies.
        var relayed = b
        relayed[Seal.hopsOffset] = 3
        #expect(Seal.verify(relayed, key: keyA))
        #expect(!Seal.verify(Array(b.dropLast()), key: keyA))
        #expect(!Seal.verify([UInt8](repeating: 0, count: 10), key: keyA))
    }
}

@Suite struct ReplayGuardTests {
    let o = IPAddress("10.0.0.1")!

    @Test func eachCounterOnceWithinTheWindow() {
        var g = ReplayGuard()
        #expect(g.check(origin: o, keyID: 1, counter: 100) == .fresh)
        #expect(g.check(origin: o, keyID: 1, counter: 100) == .replayed)
        #expect(g.check(origin: o, keyID: 1, counter: 105) == .fresh)
        // Reordered: 103 arrives after 105, once.
        #expect(g.check(origin: o, keyID: 1, counter: 103) == .fresh)
        #expect(g.check(origin: o, keyID: 1, counter: 103) == .replayed)
        #expect(g.check(origin: o, keyID: 1, counter: 105 - 64) == .tooOld)
        // Another key or origin has its own window; a restart's higher counters are fresh.
        #expect(g.check(origin: o, keyID: 2, counter: 100) == .fresh)
        #expect(g.check(origin: IPAddress("10.0.0.2")!, keyID: 1, counter: 100) == .fresh)
        #expect(g.check(origin: o, keyID: 1, counter: 1 << 40) == .fresh)
        #expect(g.check(origin: o, keyID: 1, counter: 105) == .tooOld)
    }

    @Test func peekAnswersLikeCheckAndRecordsNothing() {
        var g = ReplayGuard()
        #expect(g.peek(origin: o, keyID: 1, counter: 100) == .fresh)
        #expect(g.peek(origin: o, keyID: 1, counter: 100) == .fresh, "peek recorded the counter")
        #expect(g.count == 0)
        _ = g.check(origin: o, keyID: 1, counter: 100)
        _ = g.check(origin: o, keyID: 1, counter: 105)
        for c: UInt64 in [100, 101, 103, 105, 106, 105 - 64, 1 << 40] {
            let peeked = g.peek(origin: o, keyID: 1, counter: c)
            var copy = g
            #expect(peeked == copy.check(origin: o, keyID: 1, counter: c), "counter \(c)")
        }
        #expect(g.peek(origin: o, keyID: 2, counter: 100) == .fresh)
        #expect(g.check(origin: o, keyID: 1, counter: 103) == .fresh, "a peek made 103 look seen")
    }

    @Test func boundedByCapacity() {
        var g = ReplayGuard(capacity: 100)
        for i in 0..<1000 { _ = g.check(origin: IPAddress("10.1.\(i / 256).\(i % 256)")!, keyID: 1, counter: 1) }
        #expect(g.count <= 100)
    }
}
