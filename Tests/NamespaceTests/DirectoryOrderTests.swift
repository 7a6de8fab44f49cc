import Testing
@testable import Namespace

@Suite struct DirectoryOrderTests {
    private func entries(_ names: [String]) -> [DirEntry] {
        names.map { DirEntry(name: $0, kind: .directory(prefix: $0 + "/")) }
    }

    /// Reads `pageSize` entries at a time from offset `after`, re-listing `names()` before every page.
    private func readAll(pageSize: Int, names: (Int) -> [String]) -> [String] {
        var seen: [String] = []
        var offset = DirectoryOrder.firstCookie - 1
        var page = 0
        while true {
            let order = DirectoryOrder(entries(names(page)))
            let start = order.start(after: offset)
            guard start < order.entries.count else { return seen }
            let end = min(order.entries.count, start + pageSize)
            seen += order.entries[start..<end].map(\.name)
            offset = order.cookies[end - 1]
            page += 1
        }
    }

    @Test func readingInPagesReturnsEveryEntryOnce() {
        let names = (0..<1000).map { "checkpoint-\($0)" }
        let seen = readAll(pageSize: 37) { _ in names }
        #expect(seen.count == names.count)
        #expect(Set(seen) == Set(names))
    }

    @Test func entriesPresentThroughoutAreReturnedOnceWhileOthersComeAndGo() {
        let stable = (0..<300).map { "keep-\($0)" }
        // Between pages, earlier names are deleted and new ones created, as `rmtree` and writers do.
        let seen = readAll(pageSize: 10) { page in
            stable + (0..<50).map { "new-\(page)-\($0)" } + (page == 0 ? (0..<100).map { "gone-\($0)" } : [])
        }
        for name in stable { #expect(seen.filter { $0 == name }.count == 1, "\(name)") }
    }

    @Test func cookiesStayAboveTheDotEntriesAndAreStable() {
        for name in ["a", "b", "", "checkpoint-1", String(repeating: "x", count: 255)] {
            #expect(DirectoryOrder.cookie(name) >= DirectoryOrder.firstCookie)
            #expect(DirectoryOrder.cookie(name) == DirectoryOrder.cookie(name))
        }
    }
}
