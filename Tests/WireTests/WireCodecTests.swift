import NodeMap
import Testing
import Wire

/// The cores' own seeded generator, so every randomized test is reproducible.
typealias SeededRNG = SplitMix64

func ip(_ s: String) -> IPAddress { IPAddress(s)! }

func message(_ body: Body, flags: HeaderFlags = [], cluster: String = "test", hops: UInt8 = 0) -> Message {
    Message(
        header: Header(
            type: body.type, flags: flags, hops: hops, cluster: cluster, senderID: 1287,
            incarnation: 0x0102_0304_0506_0708,
            messageID: 0xDEAD_BEEF, keyID: flags.contains(.authenticated) ? 3 : 0,
            replayCounter: flags.contains(.authenticated) ? 99 : 0, origin: ip("10.1.5.7")),
        body: body)
}

let sampleInfo = NodeInfo(
    aliases: [Alias(ip("192.168.1.7"), source: .interface), Alias(ip("fd00::7"), source: .routed)], heartbeatPort: 7001,
    announceIntervalMillis: 250,
    capabilities: [
        .rdma(gidHi: 0xFE80_0000_0000_0000, gidLo: 0x0002_C903_0001_0203, qpn: 0x48, qkey: 0x1111_1111),
        .unknown(type: 9, value: [1, 2, 3]),
    ])

let sampleEntries = [
    SyncEntry(
        address: ip("10.1.5.7"), preferredID: 1287, explicitID: false, state: .alive, incarnation: 3,
        heartbeatPort: 7001, aliases: []),
    SyncEntry(
        address: ip("fd00::1:2"), preferredID: 0, explicitID: true, state: .suspect, incarnation: 1, heartbeatPort: 0,
        aliases: [Alias(ip("10.9.9.9"), source: .configured)]),
]

/// One body of every case (the switch makes a new case a compile error here).
let everyBody: [Body] = MessageType.allCases.map { t in
    switch t {
    case .announce: return .announce(sampleInfo)
    case .join: return .join(NodeInfo())
    case .leave: return .leave
    case .mapSync: return .mapSync(part: 1, parts: 3, entries: sampleEntries)
    case .heartbeat: return .heartbeat(sequence: 42, periodMillis: 100, members: 3000, digest: 0xDEAD_BEEF_0123_4567)
    case .probeRequest: return .probeRequest(target: ip("10.0.0.2"), targetIncarnation: 7, nonce: 0xABCD)
    case .probe: return .probe(requester: ip("fd00::3"), nonce: 5)
    case .probeAck: return .probeAck(target: ip("10.0.0.2"), targetIncarnation: 8, nonce: 0xABCD)
    case .suspect: return .suspect(target: ip("10.0.0.2"), targetIncarnation: 9)
    case .dead: return .dead(target: ip("10.0.0.2"), targetIncarnation: 9, targetID: 2)
    case .processExit:
        return .processExit(
            ProcessExit(node: ip("10.0.0.2"), pid: 4242, startTime: 123_456, status: -9, tag: 7, source: .kernel, name: "mpirun ✓"))
    case .watch: return .watch
    case .syncRequest:
        return .syncRequest(SyncRequest(session: 9, salt: 0xFEED, flags: .pull, sums: (0..<NodeMap.digestBuckets).map { UInt8($0 & 255) }))
    case .syncEntries:
        return .syncEntries(
            SyncEntries(
                session: 9, flags: [.reply, .last, .more], covered: [0, 17, 1023],
                entries: sampleEntries + [
                    SyncEntry(
                        address: ip("10.1.5.8"), preferredID: 1288, explicitID: false, state: .dead, incarnation: 4,
                        heartbeatPort: 7001, aliases: [])
                ]))
    case .offer: return .offer(members: 10000, digest: 0x0123_4567_89AB_CDEF)
    case .deaths:
        return .deaths(
            (0..<Wire.deathsPerDatagram).map {
                DeathNotice(target: ip("10.0.\($0 / 200).\($0 % 200 + 1)"), targetIncarnation: UInt64($0) << 40, targetID: UInt16($0))
            })
    }
}

func everyMessage() -> [Message] {
    everyBody.flatMap { b in
        [
            message(b),
            message(b, flags: [.authenticated, .explicitID], cluster: String(repeating: "c", count: 32), hops: 3),
        ]
    }
}

struct WireRoundTripTests {
    @Test func everyBodyRoundTrips() throws {
        #expect(Set(everyBody.map(\.type)) == Set(MessageType.allCases))
        for m in everyMessage() {
            let bytes = try m.encode()
            #expect(bytes.count <= Wire.maxDatagram)
            #expect(try Message.decode(bytes) == m, "\(m.body.type)")
        }
    }

    @Test func headerLayout() throws {
        let bytes = try message(.leave, flags: [.authenticated]).encode()
        #expect(bytes[0] == 0xD1 && bytes[1] == 0x5C)
        #expect(bytes[2] == Wire.version)
        #expect(bytes[3] == MessageType.leave.rawValue)
        #expect(bytes[4] == HeaderFlags.authenticated.rawValue)
        #expect(bytes[6] == 4)
        #expect(bytes.count == Wire.fixedHeader + 4 + Wire.tagLength)
        #expect(Array(bytes[36..<52]) == ip("10.1.5.7").bytes16)
        #expect(Array(bytes[52..<56]) == Array("test".utf8))
    }

    @Test func randomMessagesRoundTrip() throws {
        var rng = SeededRNG(seed: 0xD15C_1001)
        func addr() -> IPAddress {
            Bool.random(using: &rng)
                ? IPAddress(v4: UInt32.random(in: 0...UInt32.max, using: &rng))
                : IPAddress(hi: rng.next(), lo: rng.next())
        }
        func aliases(_ max: Int) -> [Alias] {
            (0..<Int.random(in: 0...max, using: &rng)).map { _ in
                Alias(addr(), source: AliasSource.allCases.randomElement(using: &rng)!)
            }
        }
        for _ in 0..<1000 {
            let body: Body
            switch MessageType.allCases.randomElement(using: &rng)! {
            case .announce, .join:
                let caps: [Capability] = (0..<Int.random(in: 0...8, using: &rng)).map { _ in
                    Bool.random(using: &rng)
                        ? .rdma(
                            gidHi: rng.next(), gidLo: rng.next(), qpn: UInt32.random(in: 0...UInt32.max, using: &rng),
                            qkey: UInt32.random(in: 0...UInt32.max, using: &rng))
                        : .unknown(
                            type: UInt8.random(in: 2...255, using: &rng),
                            value: (0..<Int.random(in: 0...20, using: &rng)).map { _ in
                                UInt8.random(in: 0...255, using: &rng)
                            })
                }
                let info = NodeInfo(
                    aliases: aliases(32), heartbeatPort: UInt16.random(in: 0...65535, using: &rng),
                    announceIntervalMillis: UInt32.random(in: 0...UInt32.max, using: &rng), capabilities: caps)
                body = Bool.random(using: &rng) ? .announce(info) : .join(info)
            case .mapSync:
                var entries: [SyncEntry] = []
                var room = Message.mapSyncCapacity(nameLength: 32)
                while Int.random(in: 0..<40, using: &rng) != 0 {
                    let e = SyncEntry(
                        address: addr(), preferredID: UInt16.random(in: 0...65535, using: &rng),
                        explicitID: Bool.random(using: &rng),
                        state: NodeState.allCases.randomElement(using: &rng)!, incarnation: rng.next(),
                        heartbeatPort: UInt16.random(in: 0...65535, using: &rng), aliases: aliases(3))
                    guard e.encodedSize <= room else { break }
                    room -= e.encodedSize
                    entries.append(e)
                }
                let parts = UInt16.random(in: 1...65535, using: &rng)
                body = .mapSync(part: UInt16.random(in: 0..<parts, using: &rng), parts: parts, entries: entries)
            case .processExit:
                let name = String(
                    (0..<Int.random(in: 0...30, using: &rng)).map { _ in "aZ9-_.é✓ 中".randomElement(using: &rng)! })
                body = .processExit(
                    ProcessExit(
                        node: addr(), pid: UInt32.random(in: 0...UInt32.max, using: &rng), startTime: rng.next(),
                        status: Int32.random(in: Int32.min...Int32.max, using: &rng),
                        tag: UInt16.random(in: 0...UInt16.max, using: &rng), source: Bool.random(using: &rng) ? .kernel : .daemon,
                        name: name))
            default:
                body = everyBody.randomElement(using: &rng)!
            }
            var flags: HeaderFlags = []
            if Bool.random(using: &rng) { flags.insert(.authenticated) }
            if Bool.random(using: &rng) { flags.insert(.explicitID) }
            let m = message(
                body, flags: flags, cluster: String(repeating: "x", count: Int.random(in: 1...32, using: &rng)),
                hops: UInt8.random(in: 0...255, using: &rng))
            let bytes = try m.encode()
            #expect(bytes.count <= Wire.maxDatagram)
            #expect(try Message.decode(bytes) == m)
        }
    }

    @Test func longProcessNameIsCutAtACharacterBoundary() throws {
        let name = "a" + String(repeating: "é", count: 40)  // 81 bytes; byte 64 is inside an é
        let m = message(.processExit(ProcessExit(node: ip("10.0.0.1"), pid: 1, startTime: 2, status: 0, name: name)))
        let decoded = try Message.decode(m.encode())
        guard case .processExit(let p) = decoded.body else {
            Issue.record("wrong body \(decoded.body)")
            return
        }
        #expect(p.name == "a" + String(repeating: "é", count: 31))
        let ascii = String(repeating: "z", count: 100)
        let m2 = message(.processExit(ProcessExit(node: ip("10.0.0.1"), pid: 1, startTime: 2, status: 0, name: ascii)))
        let decoded2 = try Message.decode(m2.encode())
        guard case .processExit(let p2) = decoded2.body else {
            Issue.record("wrong body \(decoded2.body)")
            return
        }
        #expect(p2.name == String(repeating: "z", count: 64))
    }

    @Test func processExitSourceTravelsAndAnUnknownOneIsRefused() throws {
        let p = ProcessExit(node: ip("10.0.0.1"), pid: 9, startTime: 2, status: 9, tag: 300, source: .kernel, name: "x")
        var bytes = try message(.processExit(p)).encode()
        guard case .processExit(let q) = try Message.decode(bytes).body else {
            Issue.record("not a process exit")
            return
        }
        #expect(q == p && q.source == .kernel && q.tag == 300)
        // The source byte sits right after the tag, before the name's length and the name ("x").
        let at = bytes.count - 3
        #expect(bytes[at] == ProcessExit.Source.kernel.rawValue)
        bytes[at] = 7
        #expect(throws: DecodeError.self) { try Message.decode(bytes) }
    }
}

struct WireRejectionTests {
    @Test func everyTruncationIsRejected() throws {
        for m in everyMessage() {
            let bytes = try m.encode()
            for n in 0..<bytes.count {
                #expect(throws: DecodeError.self, "\(m.body.type) prefix \(n)") {
                    try Message.decode(Array(bytes[0..<n]))
                }
            }
            #expect(throws: DecodeError.self) { try Message.decode(bytes + [0]) }
        }
    }

    @Test func shortPrefixesAreTooShortLongerOnesMismatch() throws {
        let bytes = try message(.announce(sampleInfo)).encode()
        #expect(throws: DecodeError.tooShort(51)) { try Message.decode(Array(bytes[0..<51])) }
        #expect(throws: DecodeError.lengthMismatch) { try Message.decode(Array(bytes[0..<(bytes.count - 1)])) }
    }

    @Test func randomGarbageNeverTraps() {
        var rng = SeededRNG(seed: 0xD15C_1002)
        var garbageAccepted = 0
        for _ in 0..<10_000 {
            let n = Int.random(in: 0...1300, using: &rng)
            let b = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if (try? Message.decode(b)) != nil { garbageAccepted += 1 }
        }
        // Random bytes carry the magic once in 65,536 and then fail the length check: none decodes.
        #expect(garbageAccepted == 0)
        // Mutated valid datagrams reach the body decoders: some decode (a mutation in a field any
        // value of which is valid), most are rejected, each with a typed reason, and several reasons
        // are met (the checks are really there, not just one).
        let valid = everyMessage().map { try! $0.encode() }
        var accepted = 0
        var reasons: [String: Int] = [:]
        for _ in 0..<10_000 {
            var b = valid.randomElement(using: &rng)!
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                b[Int.random(in: 4..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            if Bool.random(using: &rng) { b = Array(b.prefix(Int.random(in: 0...b.count, using: &rng))) }
            do {
                let m = try Message.decode(b)
                // Whatever decodes re-encodes to something that decodes to the same message.
                #expect(try Message.decode(m.encode()) == m)
                accepted += 1
            } catch {
                reasons[(error as? DecodeError)?.counterName ?? "\(error)", default: 0] += 1
            }
        }
        let rejected = reasons.values.reduce(0, +)
        #expect(accepted + rejected == 10_000)
        #expect(accepted >= 500, "mutations never reached a decodable body: \(accepted)")
        #expect(rejected >= 5000, "too few mutations rejected: \(rejected)")
        #expect(reasons.count >= 5, "rejection reasons met: \(reasons)")
    }

    func expectDecodeError(
        _ e: DecodeError, _ mutate: (inout [UInt8]) -> Void, sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        var b = try message(.heartbeat(sequence: 1, periodMillis: 100)).encode()
        mutate(&b)
        #expect(throws: e, sourceLocation: sourceLocation) { try Message.decode(b) }
    }

    @Test func specificErrors() throws {
        try expectDecodeError(.badMagic) { $0[0] = 0xCA }
        try expectDecodeError(.unsupportedVersion(1)) { $0[2] = 1 }  // version 1 (no digests) is refused
        try expectDecodeError(.unsupportedVersion(0)) { $0[2] = 0 }
        try expectDecodeError(.unknownType(200)) { $0[3] = 200 }
        try expectDecodeError(.unknownType(0)) { $0[3] = 0 }
        try expectDecodeError(.unknownType(17)) { $0[3] = 17 }
        try expectDecodeError(.unknownFlags(0x80)) { $0[4] = 0x80 }
        try expectDecodeError(.unknownFlags(0x06)) { $0[4] = 0x06 }
        try expectDecodeError(.badClusterName) { $0[6] = 0 }
        try expectDecodeError(.badClusterName) { $0[6] = 33 }
        try expectDecodeError(.badClusterName) { $0[52] = 0xFF }  // not UTF-8
        try expectDecodeError(.missingTag) { $0[4] = HeaderFlags.authenticated.rawValue }
        try expectDecodeError(.lengthMismatch) { $0[11] += 1 }
        try expectDecodeError(.tooLong(1201)) { $0 += [UInt8](repeating: 0, count: 1201 - $0.count) }
        // A longer body than the type reads: trailing bytes.
        try expectDecodeError(.malformedBody("2 trailing bytes")) {
            $0[11] += 2
            $0 += [0, 0]
        }
        #expect(DecodeError.unknownType(200).description == "unknown message type 200")
        #expect(DecodeError.unknownFlags(128).counterName == "unknown_flags")
    }

    @Test func malformedBodies() throws {
        // An alias with an unknown source.
        var b = try message(.announce(NodeInfo(aliases: [Alias(ip("10.0.0.9"), source: .interface)]))).encode()
        let aliasSource = Wire.fixedHeader + 4 + 2 + 4 + 1 + 16
        #expect(b[aliasSource] == AliasSource.interface.rawValue)
        b[aliasSource] = 0
        #expect(throws: DecodeError.malformedBody("alias source")) { try Message.decode(b) }
        // mapSync part must be below parts.
        var s = try message(.mapSync(part: 0, parts: 1, entries: [])).encode()
        s[Wire.fixedHeader + 4 + 1] = 1
        #expect(throws: DecodeError.malformedBody("part 1 of 1")) { try Message.decode(s) }
        // An entry state that does not exist.
        var e = try message(.mapSync(part: 0, parts: 1, entries: [sampleEntries[0]])).encode()
        e[Wire.fixedHeader + 4 + 6 + 16 + 2 + 1] = 0
        #expect(throws: DecodeError.malformedBody("state")) { try Message.decode(e) }
        // A deaths body counts 1 to Wire.deathsPerDatagram notices: 0 and 41 are refused both ways.
        let one = DeathNotice(target: ip("10.0.0.9"), targetIncarnation: 3, targetID: 9)
        var d = try message(.deaths([one])).encode()
        #expect(try Message.decode(d).body == .deaths([one]))
        for bad: UInt8 in [0, UInt8(Wire.deathsPerDatagram + 1)] {
            d[Wire.fixedHeader + 4] = bad
            #expect(throws: DecodeError.self) { try Message.decode(d) }
        }
        d[Wire.fixedHeader + 4] = 0
        d.removeLast(26)
        d[10] = 0
        d[11] = 1
        #expect(throws: DecodeError.malformedBody("0 death notices")) { try Message.decode(d) }
        #expect(throws: EncodeError.deathNoticeCount(0)) { try message(.deaths([])).encode() }
        let many = [DeathNotice](repeating: one, count: Wire.deathsPerDatagram + 1)
        #expect(throws: EncodeError.deathNoticeCount(41)) { try message(.deaths(many)).encode() }
    }

    @Test func mapSyncFilledToCapacityFits() throws {
        let name = String(repeating: "n", count: Wire.maxClusterName)
        let capacity = Message.mapSyncCapacity(nameLength: name.utf8.count)
        // 20 entries carrying 22 aliases between them fill the room exactly (20·36 + 22·17 = 1094).
        #expect(capacity == 1094)
        #expect(SyncEntry.minEncodedSize == 36)
        var entries = (0..<20).map { k in
            SyncEntry(
                address: IPAddress(v4: 0x0A00_0000 + UInt32(k)), preferredID: UInt16(k + 1), explicitID: false,
                state: .alive,
                incarnation: UInt64(k), heartbeatPort: 7001, aliases: [])
        }
        for k in 0..<11 {
            entries[k].aliases = (0..<2).map { j in Alias(IPAddress(v4: 0xC0A8_0000 + UInt32(2 * k + j)), source: .interface) }
            entries[k].hops = UInt8(k)
            entries[k].ageMillis = UInt32(k) * 1000 + 7
        }
        #expect(entries.map(\.encodedSize).reduce(0, +) == capacity)
        let m = message(.mapSync(part: 0, parts: 1, entries: entries), flags: [.authenticated], cluster: name)
        let bytes = try m.encode()
        #expect(bytes.count <= Wire.maxDatagram)
        #expect(bytes.count == Wire.maxDatagram)
        #expect(try Message.decode(bytes) == m)
        // One more alias does not fit.
        entries[11].aliases = [Alias(ip("192.168.9.9"), source: .interface)]
        let over = message(.mapSync(part: 0, parts: 1, entries: entries), flags: [.authenticated], cluster: name)
        #expect(throws: EncodeError.tooLarge(1217)) { try over.encode() }
    }

    @Test func mapSyncCapacityHoldsForEveryNameLength() throws {
        for len in 1...Wire.maxClusterName {
            let capacity = Message.mapSyncCapacity(nameLength: len)
            let entries = (0..<(capacity / SyncEntry.minEncodedSize)).map { k in
                SyncEntry(
                    address: IPAddress(v4: UInt32(k + 1)), preferredID: 1, explicitID: true, state: .dead,
                    incarnation: .max, heartbeatPort: .max, aliases: [])
            }
            for flags: HeaderFlags in [[], [.authenticated]] {
                let bytes = try message(
                    .mapSync(part: 0, parts: 1, entries: entries), flags: flags,
                    cluster: String(repeating: "a", count: len)
                ).encode()
                #expect(bytes.count <= Wire.maxDatagram)
            }
        }
    }

    @Test func clusterNameLengthIsCheckedAtEncode() throws {
        #expect(throws: EncodeError.clusterNameTooLong) {
            try message(.leave, cluster: String(repeating: "x", count: 33)).encode()
        }
        #expect(throws: EncodeError.clusterNameTooLong) { try message(.leave, cluster: "").encode() }
        // Bytes count, not characters: 17 × "é" is 34 bytes.
        #expect(throws: EncodeError.clusterNameTooLong) {
            try message(.leave, cluster: String(repeating: "é", count: 17)).encode()
        }
        let ok = message(.leave, cluster: String(repeating: "é", count: 16))
        #expect(try Message.decode(ok.encode()) == ok)
    }

    @Test func flagsAndRelayProperties() {
        #expect(HeaderFlags.known.rawValue == 3)
        #expect(MessageType.allCases.filter(\.isRelayed) == [.announce, .join, .leave, .dead, .processExit])
        #expect(Message.mapSyncCapacity(nameLength: 4) == Wire.maxDatagram - Wire.fixedHeader - 4 - 6 - Wire.tagLength)
    }
}

struct AntiEntropyWireTests {
    @Test func heartbeatCarriesTheDigestInSixteenBytes() throws {
        let m = message(.heartbeat(sequence: 1, periodMillis: 150, members: 7, digest: 99))
        let bytes = try m.encode()
        // Header, the cluster name, then sequence 4 + period 2 + members 2 + digest 8.
        #expect(bytes.count == Wire.fixedHeader + m.header.cluster.utf8.count + 16)
    }

    @Test func syncRequestFitsWithTheLongestNameAndATag() throws {
        let r = SyncRequest(session: 1, salt: 2, sums: [UInt8](repeating: 0xAA, count: NodeMap.digestBuckets))
        let m = message(.syncRequest(r), flags: [.authenticated], cluster: String(repeating: "c", count: 32))
        let bytes = try m.encode()
        #expect(bytes.count == Wire.fixedHeader + 32 + SyncRequest.encodedSize + Wire.tagLength)
        #expect(bytes.count <= Wire.maxDatagram)
        #expect(try Message.decode(bytes) == m)
    }

    @Test func syncRequestWithTheWrongNumberOfSumsIsRefused() throws {
        let r = SyncRequest(session: 1, salt: 2, sums: [UInt8](repeating: 0, count: NodeMap.digestBuckets))
        var bytes = try message(.syncRequest(r)).encode()
        bytes.removeLast()
        bytes[10] = UInt8((SyncRequest.encodedSize - 1) >> 8)
        bytes[11] = UInt8((SyncRequest.encodedSize - 1) & 0xFF)
        #expect(throws: DecodeError.self) { try Message.decode(bytes) }
    }

    @Test func syncEntriesRefusesABucketOutOfRangeAndUnknownFlags() throws {
        let e = SyncEntries(session: 1, flags: .reply, covered: [5], entries: [])
        var bytes = try message(.syncEntries(e)).encode()
        let body = bytes.count - 2 - 2 - 2 - 1 - 4  // entry count, the bucket, covered count, flags, session
        bytes[body + 4 + 1 + 2] = 0x04  // bucket 1024+5
        #expect(throws: DecodeError.self) { try Message.decode(bytes) }
        var flags = try message(.syncEntries(e)).encode()
        flags[body + 4] = 0x80
        #expect(throws: DecodeError.self) { try Message.decode(flags) }
    }
}
