from peerproxyd.cli import entry

entry()
