// The Qt tutorial's client window (qt-websocket-tutorial.txt, "Client" section),
// as a console program for the interop test (tests/it/qt_interop.rs).
//
// Usage: qt_client URL NAME
//
// Like the tutorial's on_connect_clicked, it constructs
//   new QWebSocket(NAME, QWebSocketProtocol::VersionLatest, ...)
// so the name travels as the handshake's Origin, and opens URL as given.
//
// stdin, one line per message (the tutorial's send box):
//   "@DST text"  -> private message: QJsonObject{src: origin(), dst, msg}
//                   sent as QJsonDocument::Compact, as on_sendpb_clicked does;
//   other lines  -> sendTextMessage(line), a message to the server.
// Lines read before the connection is up are sent once it is.
// At EOF the socket is closed; the program exits 0 after "DISCONNECTED".
//
// stdout, one line per event, flushed at once (the tutorial's msgtext pane):
//   CONNECTED                on QWebSocket::connected
//   FROM <src>: <msg>        a received JSON object (a private message)
//   MSG <text>               any other received text
//   ERROR <errorString>      QWebSocket::error
//   DISCONNECTED             on QWebSocket::disconnected
// Newlines inside a received text are printed as the two characters "\n".
//
// Exit status: 0 after a clean run, 1 if the connection failed or was lost
// before stdin ended, 2 on bad usage.

#include <QCoreApplication>
#include <QJsonDocument>
#include <QJsonObject>
#include <QSocketNotifier>
#include <QStringList>
#include <QTextStream>
#include <QUrl>
#include <QWebSocket>

#include <cerrno>
#include <cstdio>
#include <unistd.h>

namespace {

QTextStream &out()
{
    static QTextStream stream(stdout);
    static bool init = false;
    if (!init) {
        // Independent of the locale: the test reads UTF-8.
        stream.setCodec("UTF-8");
        init = true;
    }
    return stream;
}

void emitLine(const QString &line)
{
    QString oneLine = line;
    oneLine.replace(QLatin1Char('\n'), QLatin1String("\\n"));
    out() << oneLine << '\n';
    out().flush();
}

} // namespace

int main(int argc, char *argv[])
{
    QCoreApplication app(argc, argv);
    if (argc != 3) {
        std::fprintf(stderr, "usage: qt_client URL NAME\n");
        return 2;
    }
    // Decode the arguments as UTF-8 whatever the locale (the test may run
    // under LANG=C; the tutorial's name is Chinese).
    const QUrl url(QString::fromUtf8(argv[1]));
    const QString name = QString::fromUtf8(argv[2]).trimmed();

    // As in the tutorial: the client's name is the WebSocket origin.
    QWebSocket *websocket = new QWebSocket(name, QWebSocketProtocol::VersionLatest, &app);

    bool connected = false;
    bool stdinDone = false;
    QStringList pending;

    auto send = [websocket](const QString &line) {
        if (line.startsWith(QLatin1Char('@'))) {
            // Private message, exactly as on_sendpb_clicked builds it.
            const int space = line.indexOf(QLatin1Char(' '));
            const QString cname = (space < 0 ? line.mid(1) : line.mid(1, space - 1)).trimmed();
            const QString text = space < 0 ? QString() : line.mid(space + 1).trimmed();
            QJsonObject obj;
            obj["src"] = websocket->origin();
            obj["dst"] = cname;
            obj["msg"] = text;
            QString str(QJsonDocument(obj).toJson(QJsonDocument::Compact));
            websocket->sendTextMessage(str);
        } else {
            // A message to the server.
            websocket->sendTextMessage(line);
        }
    };

    QObject::connect(websocket, &QWebSocket::connected, &app, [&]() {
        connected = true;
        emitLine(QStringLiteral("CONNECTED"));
        for (const QString &line : pending)
            send(line);
        pending.clear();
        if (stdinDone)
            websocket->close();
    });

    QObject::connect(websocket, &QWebSocket::disconnected, &app, [&]() {
        emitLine(QStringLiteral("DISCONNECTED"));
        // A clean run ends because stdin ended; anything else is a failure.
        app.exit(stdinDone && connected ? 0 : 1);
    });

    QObject::connect(websocket, QOverload<QAbstractSocket::SocketError>::of(&QWebSocket::error),
                     &app, [&](QAbstractSocket::SocketError) {
                         emitLine(QStringLiteral("ERROR ") + websocket->errorString());
                         if (!connected)
                             app.exit(1);
                     });

    // The tutorial's receive handler: a JSON object is a private message
    // from "src"; anything else is shown as is.
    QObject::connect(
        websocket, &QWebSocket::textMessageReceived, &app,
        [](const QString &msg) {
            QJsonDocument jsd = QJsonDocument::fromJson(msg.toUtf8());
            if (jsd.isObject()) {
                QJsonObject jsobj = jsd.object();
                emitLine(QStringLiteral("FROM ") + jsobj["src"].toString() + QStringLiteral(": ")
                         + jsobj["msg"].toString());
            } else {
                emitLine(QStringLiteral("MSG ") + msg);
            }
        },
        Qt::QueuedConnection);

    QObject::connect(websocket, &QWebSocket::binaryMessageReceived, &app,
                     [](const QByteArray &data) {
                         emitLine(QStringLiteral("BINARY ") + QString::number(data.size()));
                     });

    // stdin: read raw bytes when readable, split into UTF-8 lines.
    QByteArray buffer;
    QSocketNotifier notifier(STDIN_FILENO, QSocketNotifier::Read);
    QObject::connect(&notifier, &QSocketNotifier::activated, &app, [&]() {
        char chunk[4096];
        const ssize_t n = ::read(STDIN_FILENO, chunk, sizeof chunk);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            return;
        if (n > 0)
            buffer.append(chunk, int(n));
        int newline;
        while ((newline = buffer.indexOf('\n')) >= 0) {
            QString line = QString::fromUtf8(buffer.left(newline));
            buffer.remove(0, newline + 1);
            if (line.endsWith(QLatin1Char('\r')))
                line.chop(1);
            if (line.trimmed().isEmpty())
                continue; // the tutorial ignores an empty send box
            if (connected)
                send(line);
            else
                pending << line;
        }
        if (n <= 0) {
            // EOF (or a read error): send any unterminated last line, close.
            notifier.setEnabled(false);
            stdinDone = true;
            const QString rest = QString::fromUtf8(buffer);
            buffer.clear();
            if (!rest.trimmed().isEmpty()) {
                if (connected)
                    send(rest);
                else
                    pending << rest;
            }
            if (connected)
                websocket->close();
        }
    });

    websocket->open(url);
    return app.exec();
}
