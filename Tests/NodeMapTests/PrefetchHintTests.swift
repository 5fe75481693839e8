import NodeMap
import Testing

/// `NodeMap.prefetch` is a cache hint for the simulator's walk over many maps: it reads the index
/// without bounds checks on the record it points to, so on any map (empty, emptied, IPv4, wide),
/// for an address it holds or not, at either step, it must not trap. (It cannot change the map: it
/// is not mutating.)
struct PrefetchHintTests {
    @Test func hintsChangeNothing() {
        var small = NodeMap()
        for k in 1...100 { _ = small.observe(NodeClaim(address: IPAddress(v4: 0x0A00_0000 | UInt32(k)), incarnation: 1), now: 0) }
        var wide = small
        _ = wide.observe(NodeClaim(address: ip("fd00::7"), incarnation: 2), now: 0)
        var emptied = small
        for k in 1...100 { _ = emptied.remove(IPAddress(v4: 0x0A00_0000 | UInt32(k))) }
        let probes = [
            IPAddress(v4: 0x0A00_0001), IPAddress(v4: 0x0A00_0064), IPAddress(v4: 0x0A00_0065), IPAddress(v4: 0xC0A8_0001),
            ip("fd00::7"), ip("fd00::8"), IPAddress.zero,
        ]
        for var map in [NodeMap(), small, wide, emptied] {
            for a in probes {
                map.prefetch(a, step: 0)
                map.prefetch(a, step: 1)
            }
            #expect(map.count <= 101)
        }
        // Step 1 guesses news (an insert to come) only where the address is not held: a held
        // address's home entry is never empty. The guess only picks which lines to ask for.
        for var map in [small, wide] {
            for k in 1...100 {
                let a = IPAddress(v4: 0x0A00_0000 | UInt32(k))
                let news = map.prefetch(a, step: 1)
                #expect(!news)
            }
        }
        var empty = NodeMap()
        let newsToEmpty = empty.prefetch(IPAddress(v4: 0x0A00_0001), step: 1)
        let newsToEmptied = emptied.prefetch(IPAddress(v4: 0x0A00_0001), step: 1)
        #expect(newsToEmpty)
        #expect(newsToEmptied)
    }
}
