import Foundation
import MapStore
import NodeMap
import Testing

func randomAddress(_ rng: inout SeededRNG) -> IPAddress {
    Bool.random(using: &rng)
        ? IPAddress(v4: UInt32.random(in: 1...UInt32.max, using: &rng))
        : IPAddress(hi: UInt64.random(in: 1...UInt64.max, using: &rng), lo: rng.next())
}

func randomSnapshot(_ rng: inout SeededRNG, maxNodes: Int = 12) -> MapSnapshot {
    var nodes: [Node] = []
    var ids = Set<UInt16>()
    var addrs = Set<IPAddress>()
    for _ in 0..<Int.random(in: 0...maxNodes, using: &rng) {
        let id = UInt16.random(in: 1...65535, using: &rng)
        let a = randomAddress(&rng)
        guard ids.insert(id).inserted, addrs.insert(a).inserted else { continue }
        let aliases = (0..<Int.random(in: 0...3, using: &rng)).map { _ in
            Alias(randomAddress(&rng), source: AliasSource.allCases.randomElement(using: &rng)!)
        }
        let caps: [Capability] = (0..<Int.random(in: 0...2, using: &rng)).map { _ in
            Bool.random(using: &rng)
                ? .rdma(
                    gidHi: rng.next(), gidLo: rng.next(), qpn: UInt32.random(in: 0...0xFFFFFF, using: &rng),
                    qkey: UInt32.random(in: 0...UInt32.max, using: &rng))
                : .unknown(
                    type: UInt8.random(in: 2...255, using: &rng),
                    value: (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                )
        }
        nodes.append(
            Node(
                address: a, id: NodeID(rawValue: id)!,
                preferredID: Bool.random(using: &rng)
                    ? NodeID(rawValue: UInt16.random(in: 1...65535, using: &rng)) : nil,
                explicitID: Bool.random(using: &rng), aliases: aliases,
                state: NodeState.allCases.randomElement(using: &rng)!,
                incarnation: rng.next(), lastHeard: Instant(nanos: rng.next() >> 8), hops: UInt8.random(in: 0...255, using: &rng),
                heartbeatPort: UInt16.random(in: 0...65535, using: &rng), capabilities: caps))
    }
    return MapSnapshot(
        generation: rng.next(), timeBaseUnixNanos: Int64.random(in: 0...Int64.max, using: &rng),
        writtenAt: Instant(nanos: rng.next() >> 8),
        selfAddress: nodes.randomElement(using: &rng)?.address ?? .zero, nodes: nodes)
}

/// A small fixed map: one plain node, a node with an alias, an IPv6 node with an RDMA capability.
func sampleSnapshot() -> MapSnapshot {
    MapSnapshot(
        generation: 7, timeBaseUnixNanos: 1_700_000_000_000_000_000, writtenAt: 5_000_000_000,
        selfAddress: ip("10.0.0.1"),
        nodes: [
            Node(address: ip("10.0.0.1"), id: nid(1), preferredID: nid(1), incarnation: 2, lastHeard: 4_600_000_000),
            Node(
                address: ip("10.0.0.2"), id: nid(2), preferredID: nid(2), explicitID: true,
                aliases: [Alias(ip("192.168.1.2"), source: .interface)], state: .suspect, incarnation: 1,
                lastHeard: 1_000_000_000, hops: 1, heartbeatPort: 7001),
            Node(
                address: ip("fd00::9"), id: nid(9), preferredID: nil, state: .dead, lastHeard: 0,
                capabilities: [
                    .rdma(gidHi: 0xFE80_0000_0000_0000, gidLo: 0x0002_C903_0001_0203, qpn: 0x48, qkey: 0x1111_1111)
                ]),
        ])
}

func temporaryDirectory() -> String {
    let d = FileManager.default.temporaryDirectory.appendingPathComponent("showmap-tests-\(UUID().uuidString)").path
    try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

struct MapFileTests {
    @Test func nodeWithoutAliasesOrCapabilitiesRoundTrips() throws {
        // The smallest record (45 bytes) must be accepted.
        let s = MapSnapshot(
            generation: 1, timeBaseUnixNanos: 0, writtenAt: 0, selfAddress: .zero,
            nodes: [Node(address: ip("10.0.0.1"), id: nid(1), preferredID: nid(1))])
        let bytes = MapFile.encode(s)
        #expect(bytes.count == MapFile.headerSize + 45 + 4)
        #expect(try MapFile.decode(bytes, path: "x") == s)
    }

    @Test func sampleRoundTrips() throws {
        let s = sampleSnapshot()
        #expect(try MapFile.decode(MapFile.encode(s), path: "x") == s)
    }

    @Test func randomMapsRoundTrip() throws {
        var rng = SeededRNG(seed: 0xD15C_0003)
        for _ in 0..<300 {
            let s = randomSnapshot(&rng)
            let bytes = MapFile.encode(s)
            #expect(try MapFile.decode(bytes, path: "x") == s)
            #expect(MapFile.encode(try MapFile.decode(bytes, path: "x")) == bytes)
        }
    }

    @Test func headerLayout() {
        let b = MapFile.encode(sampleSnapshot())
        #expect(Array(b[0..<8]) == Array("DISCDMAP".utf8))
        #expect(b[8] == 0 && b[9] == 1)
        #expect(b[10] == 0 && b[11] == 64)
        #expect(Array(b[40..<44]) == [0, 0, 0, 3])
        let body = Int(b[44]) << 24 | Int(b[45]) << 16 | Int(b[46]) << 8 | Int(b[47])
        #expect(b.count == 64 + body + 4)
        #expect(Array(b[48..<64]) == ip("10.0.0.1").bytes16)
        let crc =
            UInt32(b[b.count - 4]) << 24 | UInt32(b[b.count - 3]) << 16 | UInt32(b[b.count - 2]) << 8
            | UInt32(b[b.count - 1])
        #expect(crc == CRC32C.checksum(b[0..<(b.count - 4)]))
    }

    @Test func crc32cKnownAnswer() {
        // RFC 3720 B.4 / the standard check value.
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
    }

    @Test func everyTruncationIsRejected() {
        var rng = SeededRNG(seed: 0xD15C_0004)
        for s in [sampleSnapshot(), randomSnapshot(&rng), randomSnapshot(&rng)] {
            let bytes = MapFile.encode(s)
            for n in 0..<bytes.count {
                #expect(throws: MapFileError.self, "prefix of \(n) bytes") {
                    try MapFile.decode(Array(bytes[0..<n]), path: "p")
                }
            }
            // And one byte too many.
            #expect(throws: MapFileError.self) { try MapFile.decode(bytes + [0], path: "p") }
        }
    }

    @Test func everyFlippedByteIsRejected() {
        var rng = SeededRNG(seed: 0xD15C_0005)
        for s in [sampleSnapshot(), randomSnapshot(&rng)] {
            let bytes = MapFile.encode(s)
            for i in 0..<bytes.count {
                var b = bytes
                b[i] ^= 0xFF
                #expect(throws: MapFileError.self, "byte \(i) flipped") { try MapFile.decode(b, path: "p") }
            }
        }
    }

    @Test func validChecksumButBadContentIsRejected() {
        // Corruption that a checksum cannot see (a writer bug): fix the CRC and check the structure checks.
        func resealed(_ mutate: (inout [UInt8]) -> Void) -> [UInt8] {
            var b = MapFile.encode(sampleSnapshot())
            mutate(&b)
            let crc = CRC32C.checksum(b[0..<(b.count - 4)])
            for k in 0..<4 { b[b.count - 4 + k] = UInt8(truncatingIfNeeded: crc >> UInt32(24 - 8 * k)) }
            return b
        }
        let rec0 = MapFile.headerSize
        let cases: [(String, [UInt8])] = [
            (
                "node ID 0",
                resealed {
                    $0[rec0 + 2] = 0
                    $0[rec0 + 3] = 0
                }
            ),
            ("unknown state", resealed { $0[rec0 + 7] = 9 }),
            ("unknown flags", resealed { $0[rec0 + 6] = 0x80 }),
            ("length", resealed { $0[rec0 + 1] = 44 }),
            ("appears twice", resealed { $0[rec0 + 45 + 3] = 1 }),  // second node's ID := 1
        ]
        for (needle, b) in cases {
            do {
                _ = try MapFile.decode(b, path: "p")
                Issue.record("accepted: \(needle)")
            } catch {
                #expect("\(error)".contains(needle), "\(error)")
            }
        }
    }

    @Test func randomGarbageNeverTraps() {
        var rng = SeededRNG(seed: 0xD15C_0006)
        let valid = MapFile.encode(sampleSnapshot())
        let original = try! MapFile.decode(valid, path: "p")
        var rejected = 0
        var unchanged = 0
        for _ in 0..<2000 {
            var b = Array(valid[0..<Int.random(in: 0...valid.count, using: &rng)])
            for _ in 0..<Int.random(in: 1...6, using: &rng) where !b.isEmpty {
                b[Int.random(in: 0..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            do {
                let s = try MapFile.decode(b, path: "p")
                // Only an input whose mutations wrote back the same bytes may decode: never a
                // different map (the checksum covers every byte).
                #expect(b == valid)
                #expect(s == original)
                unchanged += 1
            } catch is MapFileError {
                rejected += 1
            } catch {
                Issue.record("untyped error \(error)")
            }
        }
        #expect(rejected + unchanged == 2000)
        #expect(rejected >= 1990)
    }

    @Test func foreignFileAndFutureVersionNameThePath() throws {
        let d = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: d) }
        let foreign = d + "/passwd"
        try Data("root:x:0:0:root:/root:/bin/bash\n".utf8 + [UInt8](repeating: 0x41, count: 80)).write(
            to: URL(fileURLWithPath: foreign))
        #expect(throws: MapFileError.badMagic(path: foreign)) { try MapFile.read(path: foreign) }
        #expect("\(MapFileError.badMagic(path: foreign))" == "\(foreign): not a discd map file (bad magic)")

        var future = MapFile.encode(sampleSnapshot())
        future[9] = 2
        let fp = d + "/future.map"
        try Data(future).write(to: URL(fileURLWithPath: fp))
        #expect(throws: MapFileError.unsupportedVersion(path: fp, version: 2)) { try MapFile.read(path: fp) }
        #expect(
            "\(MapFileError.unsupportedVersion(path: fp, version: 2))"
                == "\(fp): map file version 2 is not supported (this build reads version 1)")

        // A short foreign file is foreign, not truncated; a short map file is truncated.
        #expect(throws: MapFileError.badMagic(path: "s")) { try MapFile.decode(Array("hello world".utf8), path: "s") }
        #expect(throws: MapFileError.tooShort(path: "s", size: 10)) {
            try MapFile.decode(Array(future[0..<10]), path: "s")
        }
        #expect(
            "\(MapFileError.tooShort(path: "s", size: 10))"
                == "s: truncated map file (10 bytes, a map file has at least 68)")

        let missing = d + "/nope.map"
        #expect(throws: MapFileError.notFound(path: missing)) { try MapFile.read(path: missing) }
        #expect("\(MapFileError.notFound(path: missing))" == "\(missing): no such map file")
        // A directory is not a map file.
        #expect(throws: MapFileError.self) { try MapFile.read(path: d) }
    }

    @Test func atomicWrite() throws {
        let d = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: d) }
        let p = d + "/discd.map"
        var rng = SeededRNG(seed: 0xD15C_0007)
        for _ in 0..<5 {
            let s = randomSnapshot(&rng)
            try MapFile.write(s, to: p)
            #expect(try MapFile.read(path: p) == s)
            #expect(try FileManager.default.contentsOfDirectory(atPath: d) == ["discd.map"])
        }
        let attrs = try FileManager.default.attributesOfItem(atPath: p)
        #expect((attrs[.posixPermissions] as? NSNumber)?.intValue == 0o644)
    }

    @Test func writeIntoMissingDirectoryIsAnIOError() {
        let p = "/nonexistent-discd-\(UUID().uuidString)/discd.map"
        do {
            try MapFile.write(sampleSnapshot(), to: p)
            Issue.record("write succeeded")
        } catch let e as MapFileError {
            guard case .io(let path, let op, let err) = e else {
                Issue.record("expected .io, got \(e)")
                return
            }
            #expect(path.hasPrefix(p))
            #expect(op == "create")
            #expect(err == ENOENT)
            #expect("\(e)".contains("No such file or directory"))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func snapshotFromMap() {
        var m = NodeMap(timeBaseUnixNanos: 1000)
        // Whole milliseconds: the map keeps the time heard in them.
        m.observe(NodeClaim(address: ip("10.0.0.2")), now: 50_000_000)
        m.observe(NodeClaim(address: ip("10.0.0.1")), now: 60_000_000)
        let s = MapSnapshot(map: m, writtenAt: 70, selfAddress: ip("10.0.0.1"))
        #expect(s.nodes.map(\.id) == [nid(1), nid(2)])
        #expect(s.generation == m.generation)
        #expect(s.lastHeardUnixNanos(s.nodes[0]) == 60_001_000)
        #expect(MapSnapshot(map: m, writtenAt: 0, selfAddress: nil).selfAddress == .zero)
    }
}
