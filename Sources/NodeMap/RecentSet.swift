/// A set that remembers at most `capacity` elements, forgetting the oldest first: the bounded
/// "seen" caches of the protocol cores (relay de-duplication, death notices).
public struct RecentSet<Element: Hashable & Sendable>: Sendable {
    public let capacity: Int
    private var members: Set<Element> = []
    private var order: [Element] = []
    private var head = 0

    public init(capacity: Int) {
        precondition(capacity > 0, "a RecentSet needs room for at least one element")
        self.capacity = capacity
    }

    public var count: Int { members.count }
    public func contains(_ e: Element) -> Bool { members.contains(e) }

    /// Adds `e`; returns false if it was already there. The oldest element goes when full.
    @discardableResult
    public mutating func insert(_ e: Element) -> Bool {
        guard members.insert(e).inserted else { return false }
        if order.count < capacity {
            order.append(e)
        } else {
            members.remove(order[head])
            order[head] = e
            head = (head + 1) % capacity
        }
        return true
    }
}
