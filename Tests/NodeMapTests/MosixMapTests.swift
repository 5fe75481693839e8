import NodeMap
import Testing

struct MosixMapTests {
    static func node(_ id: Int, _ a: String, _ state: NodeState = .alive, aliases: [String] = []) -> Node {
        Node(
            address: ip(a), id: nid(id), preferredID: nid(id),
            aliases: aliases.map { Alias(ip($0), source: .configured) },
            state: state)
    }

    @Test func consecutiveIDsAndAddressesCollapseIntoOneRun() {
        let nodes = [Self.node(3, "10.0.0.3"), Self.node(1, "10.0.0.1"), Self.node(2, "10.0.0.2")]
        #expect(MosixMap.render(nodes) == "1 10.0.0.1 3\n")
    }

    @Test func gapsBreakRuns() {
        let nodes = [
            Self.node(1, "10.0.0.1"), Self.node(2, "10.0.0.2"),
            Self.node(4, "10.0.0.4"),  // ID gap and address gap
            Self.node(5, "10.0.0.9"),  // consecutive ID, address gap
            Self.node(6, "10.0.0.10"),
            Self.node(8, "10.0.0.11"),  // ID gap, consecutive address
        ]
        #expect(MosixMap.render(nodes) == "1 10.0.0.1 2\n4 10.0.0.4 1\n5 10.0.0.9 2\n8 10.0.0.11 1\n")
    }

    @Test func runsCrossOctetsButNotFamilies() {
        let nodes = [
            Self.node(255, "10.0.0.255"), Self.node(256, "10.0.1.0"),
            Self.node(257, "::ffff:10.0.1.1"),  // the same IPv4 address spelled mapped
            Self.node(258, "fd00::1"), Self.node(259, "fd00::2"),
        ]
        #expect(MosixMap.render(nodes) == "255 10.0.0.255 3\n258 fd00::1 2\n")
    }

    @Test func deadAndLeftNodesAreLeftOutAndAliasesFollow() {
        let nodes = [
            Self.node(1, "10.0.0.1", aliases: ["192.168.0.1"]), Self.node(2, "10.0.0.2", .dead),
            Self.node(3, "10.0.0.3", .suspect, aliases: ["192.168.0.3", "fd00::3"]), Self.node(4, "10.0.0.4", .left),
        ]
        #expect(
            MosixMap.render(nodes)
                == "1 10.0.0.1 1\n3 10.0.0.3 1\n1 192.168.0.1 ALIAS\n3 192.168.0.3 ALIAS\n3 fd00::3 ALIAS\n")
    }

    @Test func parseRoundTrip() throws {
        let nodes = [
            Self.node(1, "10.0.0.1", aliases: ["192.168.0.1"]), Self.node(2, "10.0.0.2"), Self.node(3, "10.0.0.3"),
            Self.node(100, "fd00::64", aliases: ["10.9.9.9"]), Self.node(65535, "10.0.255.255"),
        ]
        let text = MosixMap.render(nodes)
        let lines = try MosixMap.parse(text)
        #expect(lines == MosixMap.lines(for: nodes))
        let claims = MosixMap.claims(lines)
        #expect(claims.map(\.address) == nodes.map(\.address))
        #expect(claims.allSatisfy { $0.explicitID })
        #expect(claims.map(\.preferredID) == nodes.map(\.preferredID))
        #expect(claims[0].aliases == [Alias(ip("192.168.0.1"), source: .configured)])
        // Seeding a map from it gives back the same IDs.
        var m = NodeMap()
        for c in claims { m.observe(c, now: 0) }
        #expect(MosixMap.render(m.sortedByID()) == text)
    }

    @Test func parseCommentsBlanksAndCase() throws {
        let text = "# openMosix map\n\n1\t10.0.0.1  4   # four nodes\r\n  3 192.168.0.3 alias\n#\n"
        #expect(
            try MosixMap.parse(text) == [
                .range(first: nid(1), address: ip("10.0.0.1"), count: 4),
                .alias(id: nid(3), address: ip("192.168.0.3")),
            ])
        #expect(try MosixMap.parse("").isEmpty)
        #expect(MosixMap.render([]) == "\n")
    }

    func expectError(_ text: String, line: Int, _ needle: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try MosixMap.parse(text)
            Issue.record("accepted: \(text)", sourceLocation: sourceLocation)
        } catch let e as MosixMap.ParseError {
            #expect(e.line == line, "\(e)", sourceLocation: sourceLocation)
            #expect(e.reason.contains(needle), "\(e)", sourceLocation: sourceLocation)
            #expect("\(e)".hasPrefix("line \(line): "), sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func parseErrorsNameTheirLine() {
        expectError("1 10.0.0.1 1\nx 10.0.0.2 1\n", line: 2, "not a node ID")
        expectError("0 10.0.0.1 1\n", line: 1, "not a node ID")
        expectError("65536 10.0.0.1 1\n", line: 1, "not a node ID")
        expectError("# c\n1 10.0.0.300 1\n", line: 2, "not an IPv4 or IPv6 address")
        expectError("1 host.example 1\n", line: 1, "not an IPv4 or IPv6 address")
        expectError("\n\n1 10.0.0.1 0\n", line: 3, "is not a count")
        expectError("1 10.0.0.1 many\n", line: 1, "is not a count")
        expectError("65530 10.0.0.1 10\n", line: 1, "10 IDs from 65530 run past 65535")
        expectError("2 10.0.0.1 9223372036854775807\n", line: 1, "run past 65535")
        expectError("2 10.0.0.1 99999999999999999999\n", line: 1, "is not a count")
        expectError("1 255.255.255.250 10\n", line: 1, "run past the end of the address space")
        expectError("1 10.0.0.1 5\n6 10.0.1.1 2\n3 10.0.2.1 1\n", line: 3, "overlap IDs 1..5")
        expectError("1 10.0.0.1\n", line: 1, "expected 3 fields")
        expectError("1 10.0.0.1 1 extra\n", line: 1, "expected 3 fields")
        expectError("1 10.0.0.1 1\n\n9 10.0.0.9 ALIAS\n", line: 3, "ALIAS for node 9")
        // One address under two IDs.
        expectError("1 10.0.0.1 5\n10 10.0.0.5 2\n", line: 2, "overlap addresses 10.0.0.1..10.0.0.5")
        expectError("1 fd00::1 1\n2 fd00::1 1\n", line: 2, "overlap addresses fd00::1..fd00::1")
    }

    @Test func aliasMayComeBeforeItsRange() throws {
        let lines = try MosixMap.parse("5 192.168.0.5 ALIAS\n1 10.0.0.1 8\n")
        #expect(lines.count == 2)
        #expect(
            MosixMap.claims(lines).first { $0.preferredID == nid(5) }?.aliases.map(\.address) == [ip("192.168.0.5")])
    }
}
