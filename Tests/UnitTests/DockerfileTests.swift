import Dockerfile
import Testing

struct DockerfileTests {
    private func build(_ text: String, args: [String: String] = [:]) throws -> BuildFile {
        try BuildFile(try DockerfileParser.parse(text), buildArgs: args)
    }

    private func reads(_ b: BuildFile, stage: Int = 0) -> [[String]] {
        b.stages[stage].steps.map { $0.reads.flatMap(\.sources) }
    }

    @Test func directivesContinuationsAndComments() throws {
        let text = """
            # syntax=docker/dockerfile:1.7
            # escape=`
            FROM alpine
            # a comment
            RUN echo one `
              # a comment inside the continuation is dropped

              two
            COPY a.txt `
                 b.txt /dst/
            """
        let syntax = try DockerfileParser.parse(text)
        #expect(syntax.directives == ["syntax": "docker/dockerfile:1.7", "escape": "`"])
        #expect(syntax.escape == "`")
        #expect(syntax.instructions.map(\.keyword) == ["FROM", "RUN", "COPY"])
        #expect(syntax.instructions[1].rest == "echo one two")
        #expect(syntax.instructions[1].line == 5)
        let b = try BuildFile(syntax)
        #expect(b.notes.isEmpty, "the stock frontend is modelled: \(b.notes)")
        #expect(reads(b) == [[], ["a.txt", "b.txt"]])
    }

    @Test func aDirectiveAfterACommentIsJustAComment() throws {
        let syntax = try DockerfileParser.parse("# hello\n# escape=`\nFROM alpine\nRUN a \\\n b\n")
        #expect(syntax.directives.isEmpty)
        #expect(syntax.escape == "\\")
        #expect(syntax.instructions[1].rest == "a b")
    }

    @Test func heredocsMakeFilesAndReadNothing() throws {
        let text = "FROM alpine\nCOPY <<EOF /app/config.txt\nkey = value\n  indented\nEOF\nRUN <<-SCRIPT\n\techo hi\n\tSCRIPT\nCOPY real.txt /app/\n"
        let syntax = try DockerfileParser.parse(text)
        #expect(syntax.instructions.count == 4)
        #expect(syntax.instructions[1].heredocs == [Heredoc(name: "EOF", body: "key = value\n  indented\n", stripTabs: false, quoted: false)])
        #expect(syntax.instructions[2].heredocs.first?.body == "echo hi\n")
        let b = try BuildFile(syntax)
        #expect(reads(b) == [[], [], ["real.txt"]])
        #expect(b.stages[0].steps[0].text.contains("key = value"), "the heredoc body is part of the layer's key")
        #expect(throws: DockerfileError.self) { try DockerfileParser.parse("FROM a\nCOPY <<EOF /x\nnever closed\n") }
    }

    @Test func jsonFormAndFlags() throws {
        let b = try build("""
            FROM alpine
            COPY ["a file.txt", "./dir/", "/dst/"]
            COPY --chown=1000:1000 --chmod=0644 --link --exclude=*.md --exclude=tests/ --parents src/ /app/
            """)
        #expect(reads(b) == [["a file.txt", "dir"], ["src"]])
        let step = b.stages[0].steps[1]
        #expect(step.reads.first?.excludes == ["*.md", "tests/"])
        #expect(step.text.hasPrefix("COPY --chown=1000:1000 --chmod=0644 --link --exclude=*.md --exclude=tests/ --parents src/ /app/"))
    }

    @Test func argsAndEnvExpandInSources() throws {
        let text = """
            ARG BASE=python:3.11
            ARG SRC=src
            FROM $BASE AS app
            ARG SRC
            ARG EXTRA
            ENV CONF=conf.d LEVEL="two words"
            COPY ${SRC}/ ${UNSET:-fallback}.txt ${SRC:+alt}.txt $CONF/ ${EXTRA-none}.cfg /app/
            """
        var b = try build(text)
        #expect(b.stages[0].base == "python:3.11")
        #expect(reads(b) == [[], [], [], ["src", "fallback.txt", "alt.txt", "conf.d", "none.cfg"]])
        b = try build(text, args: ["SRC": "code", "BASE": "python:3.12", "EXTRA": "x"])
        #expect(b.stages[0].base == "python:3.12")
        #expect(reads(b)[3] == ["code", "fallback.txt", "alt.txt", "conf.d", "x.cfg"])
        // A global ARG is not visible in a stage until declared there.
        b = try build("ARG V=1\nFROM alpine\nCOPY f$V /\nARG V\nCOPY g$V /\n")
        #expect(reads(b) == [["f"], [], ["g1"]])
        #expect(throws: DockerfileError.self) { try build("FROM alpine\nCOPY ${NEEDED:?set NEEDED} /\n") }
    }

    @Test func stagesTheTargetNeeds() throws {
        let text = """
            FROM golang AS builder
            COPY go.mod ./
            RUN go build
            FROM alpine AS unused
            COPY docs/ /docs/
            FROM builder AS tested
            RUN go test
            FROM alpine AS final
            COPY --from=builder /out/app /app
            RUN --mount=type=bind,source=scripts,target=/s --mount=type=cache,target=/root/.cache --mount=from=tested,target=/t true
            COPY --from=busybox:1.36 /bin/busybox /bin/
            COPY app.conf /etc/
            """
        let b = try build(text)
        #expect(try b.stagesNeeded(target: nil) == [0, 2, 3])
        #expect(try b.stagesNeeded(target: "builder") == [0])
        #expect(try b.stagesNeeded(target: "unused") == [1])
        #expect(b.stages[2].baseStage == 0)
        let final = b.stages[3].steps
        #expect(final[0].stageInputs == [0] && final[0].reads.isEmpty)
        #expect(final[1].reads == [BuildFile.ContextRead(sources: ["scripts"])])
        #expect(final[1].stageInputs == [2])
        #expect(final[2].imageInput == "busybox:1.36" && final[2].reads.isEmpty)
        #expect(throws: DockerfileError.self) { try b.stagesNeeded(target: "nope") }
    }

    @Test func remoteSourcesAndUnmodelledFeatures() throws {
        var b = try build("FROM alpine\nADD https://example.com/x.tgz git@github.com:a/b.git local.tgz /x/\n")
        #expect(reads(b) == [["local.tgz"]])
        b = try build("FROM alpine\nONBUILD COPY . /app\n")
        #expect(b.wholeContextMatters)
        b = try build("# syntax=example.com/my/frontend:1\nFROM alpine\n")
        #expect(b.wholeContextMatters)
        #expect(b.notes.first?.contains("custom frontend") == true)
        b = try build("# syntax=docker.io/docker/dockerfile:1@sha256:abc\nFROM alpine\n")
        #expect(!b.wholeContextMatters)
    }

    @Test func badFilesNameTheLine() throws {
        #expect(throws: DockerfileError(file: "Dockerfile", line: 1, message: "COPY before the first FROM")) {
            try build("COPY a /b\n")
        }
        #expect(throws: DockerfileError.self) { try DockerfileParser.parse("# escape=x\nFROM a\n") }
        #expect(throws: DockerfileError(file: "Dockerfile", line: 2, message: "COPY needs a source and a destination")) {
            try build("FROM a\nCOPY onlyone\n")
        }
    }
}

/// Issue 26, item 2: a bad Dockerfile is an error naming the file and line, never a crash.
struct DockerfileCrashTests {
    @Test func envBeforeFromIsAnErrorNotACrash() throws {
        let syntax = try DockerfileParser.parse("ENV A=1\nFROM busybox\nRUN true\n", file: "ctx/Dockerfile")
        #expect(throws: DockerfileError.self) { try BuildFile(syntax, file: "ctx/Dockerfile") }
        do { _ = try BuildFile(syntax, file: "ctx/Dockerfile") } catch let e as DockerfileError {
            #expect(e.line == 1 && e.file == "ctx/Dockerfile" && e.message.contains("ENV before the first FROM"), "\(e)")
        }
    }

    @Test func emptyMountFieldsAreNoCrash() throws {
        for text in ["FROM b\nRUN --mount== true\n", "FROM b\nRUN --mount=type=bind,=,src= true\n", "FROM b\nRUN --mount=, true\n"] {
            _ = try BuildFile(try DockerfileParser.parse(text))
        }
    }
}
