import Foundation
import MapStore
import NodeMap
import Testing

struct MapRenderingTests {
    /// 5.4 s after map time 0 of the sample: the file is 0.4 s old.
    let now: Int64 = 1_700_000_000_000_000_000 + 5_400_000_000

    @Test func ages() {
        #expect(MapRendering.age(nanos: 0) == "0.0s")
        #expect(MapRendering.age(nanos: 400_000_000) == "0.4s")
        #expect(MapRendering.age(nanos: 9_999_999_999) == "9.9s")
        #expect(MapRendering.age(nanos: 10_000_000_000) == "10s")
        #expect(MapRendering.age(nanos: 59_900_000_000) == "59s")
        #expect(MapRendering.age(nanos: 723_000_000_000) == "12m3s")
        #expect(MapRendering.age(nanos: 3_600_000_000_000 * 3 + 60_000_000_000 * 12) == "3h12m")
        #expect(MapRendering.age(nanos: 86_400_000_000_000 * 2 + 3_600_000_000_000 * 3) == "2d3h")
        #expect(MapRendering.age(nanos: -5_000_000_000) == "0.0s")
    }

    @Test func table() {
        let t = MapRendering.table(sampleSnapshot(), nowUnixNanos: now)
        #expect(
            t == """
                map generation 7: 3 nodes, 2 members; written by 10.0.0.1 (id 1) 0.4s ago
                ID  ADDRESS   STATE    INC  AGE   HOPS  ALIASES                 RDMA
                1   10.0.0.1  alive    2    0.8s  0     -                       -
                2   10.0.0.2  suspect  1    4.4s  1     192.168.1.2(interface)  -
                9   fd00::9   dead     0    5.4s  0     -                       gid fe80::2:c903:1:203 qpn 72

                """)
        let members = MapRendering.table(sampleSnapshot(), nowUnixNanos: now, membersOnly: true)
        #expect(!members.contains("fd00::9"))
        // Without any RDMA endpoint among the nodes shown, no RDMA column.
        #expect(!members.contains("RDMA"))
        #expect(MapRendering.rdmaText([.rdma(gidHi: 0, gidLo: 0x0000_FFFF_0A63_000B, qpn: 17, qkey: 1)]) == "gid ::ffff:10.99.0.11 qpn 17")
        #expect(members.split(separator: "\n").count == 4)
    }

    @Test func tableOfAnEmptyMapByAnUnknownWriter() {
        let s = MapSnapshot(generation: 0, timeBaseUnixNanos: 0, writtenAt: 0, selfAddress: .zero, nodes: [])
        #expect(
            MapRendering.table(s, nowUnixNanos: 723_000_000_000)
                == "map generation 0: 0 nodes, 0 members; written by an unknown node 12m3s ago\n"
                + "ID  ADDRESS  STATE  INC  AGE  HOPS  ALIASES\n")
    }

    @Test func mosix() {
        #expect(MapRendering.mosix(sampleSnapshot()) == "1 10.0.0.1 2\n2 192.168.1.2 ALIAS\n")
        #expect(MapRendering.mosix(sampleSnapshot()) == MosixMap.render(sampleSnapshot().nodes))
        #expect(MapRendering.mosix(sampleSnapshot(), membersOnly: true) == MosixMap.render(sampleSnapshot().nodes))
    }

    static let rootKeys: Set<String> = ["generation", "self", "written_at_unix_ms", "nodes"]
    static let nodeKeys: Set<String> = [
        "id", "address", "preferred_id", "explicit_id", "state", "incarnation", "last_heard_unix_ms", "age_ms", "hops",
        "heartbeat_port", "aliases", "capabilities",
    ]

    static func parse(_ json: String) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
    }

    @Test func jsonContract() throws {
        let text = MapRendering.json(sampleSnapshot(), nowUnixNanos: now)
        #expect(text.hasSuffix("}\n"))
        #expect(!text.dropLast().contains("\n"))
        let root = try Self.parse(text)
        #expect(Set(root.keys) == Self.rootKeys)
        #expect(root["generation"] as? Int == 7)
        #expect(root["self"] as? String == "10.0.0.1")
        #expect(root["written_at_unix_ms"] as? Int == 1_700_000_005_000)
        let nodes = try #require(root["nodes"] as? [[String: Any]])
        #expect(nodes.count == 3)
        for n in nodes { #expect(Set(n.keys) == Self.nodeKeys) }
        #expect(nodes.map { $0["id"] as? Int } == [1, 2, 9])

        let n1 = nodes[0]
        #expect(n1["address"] as? String == "10.0.0.1")
        #expect(n1["preferred_id"] as? Int == 1)
        #expect(n1["explicit_id"] as? Bool == false)
        #expect(n1["state"] as? String == "alive")
        #expect(n1["incarnation"] as? Int == 2)
        #expect(n1["last_heard_unix_ms"] as? Int == 1_700_000_004_600)
        #expect(n1["age_ms"] as? Int == 800)
        #expect(n1["hops"] as? Int == 0)
        #expect(n1["heartbeat_port"] as? Int == 0)
        #expect((n1["aliases"] as? [Any])?.isEmpty == true)
        #expect((n1["capabilities"] as? [Any])?.isEmpty == true)

        let n2 = nodes[1]
        #expect(n2["explicit_id"] as? Bool == true)
        #expect(n2["state"] as? String == "suspect")
        #expect(n2["hops"] as? Int == 1)
        #expect(n2["heartbeat_port"] as? Int == 7001)
        let aliases = try #require(n2["aliases"] as? [[String: Any]])
        #expect(aliases.count == 1)
        #expect(aliases.first?["address"] as? String == "192.168.1.2")
        #expect(aliases.first?["source"] as? String == "interface")
        #expect(aliases.first.map { Set($0.keys) } == ["address", "source"])

        let n3 = nodes[2]
        #expect(n3["address"] as? String == "fd00::9")
        #expect(n3["preferred_id"] is NSNull)
        #expect(n3["state"] as? String == "dead")
        let caps = try #require(n3["capabilities"] as? [[String: Any]])
        #expect(caps.count == 1)
        #expect(caps.first.map { Set($0.keys) } == ["type", "gid", "qpn", "qkey"])
        #expect(caps.first?["type"] as? String == "rdma")
        #expect(caps.first?["gid"] as? String == "fe800000000000000002c9030001020" + "3")
        #expect(caps.first?["qpn"] as? Int == 0x48)
        #expect(caps.first?["qkey"] as? Int == 0x1111_1111)
    }

    @Test func jsonIsStableAndSorted() throws {
        let a = MapRendering.json(sampleSnapshot(), nowUnixNanos: now)
        var shuffled = sampleSnapshot()
        shuffled.nodes.reverse()
        #expect(MapRendering.json(shuffled, nowUnixNanos: now) == a)
        #expect(a.hasPrefix(#"{"generation":7,"nodes":[{"address":"10.0.0.1","age_ms":800,"aliases":[],"#))
        #expect(a.hasSuffix(#"],"self":"10.0.0.1","written_at_unix_ms":1700000005000}"# + "\n"))
        // Same bytes as Foundation's sorted-key serialization of the parsed object.
        let reserialized = try JSONSerialization.data(withJSONObject: Self.parse(a), options: [.sortedKeys])
        #expect(String(decoding: reserialized, as: UTF8.self) + "\n" == a)
    }

    @Test func jsonUnknownCapabilityMembersAndUnknownWriter() throws {
        var s = sampleSnapshot()
        s.selfAddress = .zero
        s.nodes[0].capabilities = [.unknown(type: 7, value: [0x00, 0xAB, 0xFF])]
        let root = try Self.parse(MapRendering.json(s, nowUnixNanos: now, membersOnly: true))
        #expect(root["self"] is NSNull)
        let nodes = try #require(root["nodes"] as? [[String: Any]])
        #expect(nodes.map { $0["state"] as? String } == ["alive", "suspect"])
        let cap = try #require((nodes[0]["capabilities"] as? [[String: Any]])?.first)
        #expect(Set(cap.keys) == ["type", "value"])
        #expect(cap["type"] as? Int == 7)
        #expect(cap["value"] as? String == "00abff")
    }

    @Test func jsonOfRandomMapsParses() throws {
        var rng = SeededRNG(seed: 0xD15C_0008)
        for _ in 0..<50 {
            var s = randomSnapshot(&rng)
            for i in s.nodes.indices { s.nodes[i].incarnation >>= 12 }  // keep within a double's exact range
            s.generation >>= 12
            let root = try Self.parse(MapRendering.json(s, nowUnixNanos: 0))
            let nodes = try #require(root["nodes"] as? [[String: Any]])
            #expect(nodes.count == s.nodes.count)
            #expect(nodes.map { $0["id"] as? Int } == s.nodes.map { Int($0.id.rawValue) }.sorted())
        }
    }
}

/// The built `showmap` next to the test bundle, when `swift test` built it.
let showmapBinary: String? = {
    guard let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else { return nil }
    var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
    for _ in 0..<3 {
        let candidate = dir.appendingPathComponent("showmap").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir.deleteLastPathComponent()
    }
    return nil
}()

/// A missing binary fails every test here (no silent skip): `swift build --build-tests` builds it.
@Suite
struct ShowmapBinaryTests {
    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    func run(_ args: [String], stdin: [UInt8]? = nil) throws -> Result {
        let binary = try #require(
            showmapBinary, "no showmap binary next to the test bundle (swift build --build-tests builds it)")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        let out = Pipe()
        let err = Pipe()
        let inp = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = stdin == nil ? FileHandle.nullDevice : inp
        try p.run()
        if let stdin {
            inp.fileHandleForWriting.write(Data(stdin))
            try inp.fileHandleForWriting.close()
        }
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Result(
            status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
            stderr: String(decoding: e, as: UTF8.self))
    }

    @Test func outputs() throws {
        let d = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: d) }
        let path = d + "/discd.map"
        try MapFile.write(sampleSnapshot(), to: path)

        let table = try run(["-f", path])
        #expect(table.status == 0)
        #expect(table.stderr.isEmpty)
        #expect(table.stdout.hasPrefix("map generation 7: 3 nodes, 2 members; written by 10.0.0.1 (id 1) "))
        #expect(table.stdout.contains("\n2   10.0.0.2  suspect  1    "))

        let mosix = try run(["--file", path, "--mosix"])
        #expect(mosix.status == 0)
        #expect(mosix.stdout == "1 10.0.0.1 2\n2 192.168.1.2 ALIAS\n")

        let json = try run(["-f", path, "--json", "--members"])
        #expect(json.status == 0)
        let root = try MapRenderingTests.parse(json.stdout)
        #expect(Set(root.keys) == MapRenderingTests.rootKeys)
        #expect((root["nodes"] as? [Any])?.count == 2)

        let stdin = try run(["-f", "-", "--mosix"], stdin: MapFile.encode(sampleSnapshot()))
        #expect(stdin.status == 0)
        #expect(stdin.stdout == mosix.stdout)
    }

    @Test func errorsAreOneLineAndExitOne() throws {
        let d = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: d) }
        let missing = d + "/none.map"
        let r = try run(["-f", missing])
        #expect(r.status == 1)
        #expect(r.stdout.isEmpty)
        #expect(r.stderr == "showmap: \(missing): no such map file\n")

        let foreign = d + "/foreign"
        try Data(repeating: 0x41, count: 100).write(to: URL(fileURLWithPath: foreign))
        let f = try run(["-f", foreign, "--json"])
        #expect(f.status == 1)
        #expect(f.stderr == "showmap: \(foreign): not a discd map file (bad magic)\n")

        var bytes = MapFile.encode(sampleSnapshot())
        bytes[70] ^= 0xFF
        let corrupt = try run(["-f", "-"], stdin: bytes)
        #expect(corrupt.status == 1)
        #expect(corrupt.stderr.hasPrefix("showmap: <stdin>: corrupt map file (checksum 0x"))
        #expect(corrupt.stderr.filter { $0 == "\n" }.count == 1)

        let truncated = try run(["-f", "-"], stdin: Array(bytes[0..<30]))
        #expect(truncated.status == 1)
        #expect(truncated.stderr.hasPrefix("showmap: <stdin>: truncated map file (30 bytes"))
    }

    @Test func badUsageExitsTwo() throws {
        for args in [["--json", "--mosix"], ["--bogus"], ["-f"], ["extra"]] {
            let r = try run(args)
            #expect(r.status == 2, "\(args)")
            #expect(r.stdout.isEmpty)
            #expect(r.stderr.contains("Usage: showmap"), "\(args): \(r.stderr)")
        }
        let help = try run(["--help"])
        #expect(help.status == 0)
        #expect(help.stdout.contains("--members"))
    }
}
