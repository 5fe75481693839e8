import Discovery
import Foundation
import NodeMap
import Testing

/// docs/PROTOCOL.md states the anti-entropy and wave defaults in prose ("Anti-entropy"): each
/// figure there must be the one `DiscoverySettings.default` holds, so that the doc cannot drift from
/// the daemon (one source for every default; the detector's table has DetectorDocTests).
struct ProtocolDocTests {
    static func protocolDoc() -> String? {
        var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        let path = parts.joined(separator: "/") + "/docs/PROTOCOL.md"
        // Prose wraps anywhere: compare with line breaks as spaces.
        return (try? String(contentsOfFile: path, encoding: .utf8))?.replacingOccurrences(of: "\n", with: " ")
    }

    @Test func antiEntropyProseMatchesTheDefaults() throws {
        let doc = try #require(Self.protocolDoc())
        let d = DiscoverySettings.default
        func ms(_ t: TimeSpan) -> UInt64 { t.nanos / 1_000_000 }
        func s(_ t: TimeSpan) -> UInt64 { t.nanos / 1_000_000_000 }
        let expected = [
            "(timeout \(ms(d.syncTimeout)) ms)",
            "\(Int(d.syncAnswerRate)) requests and offers per second at most",
            "at most \(d.syncReplyDatagrams) datagrams (flag `more`",
            "at most \(d.syncPushDatagrams) datagrams per answer datagram",
            "≥ max(\(d.influxMinJoins), members/\(d.influxDivisor)) joins within \(s(d.influxWindow)) s",
            "When no join came for \(ms(d.influxQuiet)) ms",
            "within [100 ms, \(ms(d.waveSpread)) ms]",
            "at most one wave per \(s(d.waveGap)) s",
            "hears \(d.influxMinJoins) within \(s(d.influxWindow)) s outside a join influx",
            "≤ \(Int(d.syncAnswerRate)) answers/offers per second; an answer ≤ \(d.syncReplyDatagrams) datagrams, a push ≤ \(d.syncPushDatagrams) per answer datagram",
            "≤ \(d.waveCopies) wave announces per \(s(d.waveGap)) s",
        ]
        for e in expected { #expect(doc.contains(e), "docs/PROTOCOL.md does not say: \(e)") }
        // "announces three times": the doc words the copy count.
        #expect(d.waveCopies == 3 && doc.contains("influx announces three times"))
    }
}
